//! Authentication and authorization: JWT issue/verify, the extractor that turns a bearer token
//! into an [`AuthenticatedSession`], and [`Authorized<P>`] for permission checks.
pub mod access;
pub mod client;
pub mod extractor;
pub mod jwt;
pub mod keys;

pub use crate::domain::SharedAccess;
pub use access::{Access, Authorized, DenialAudit};
pub use client::client_ip;
pub use extractor::{AuthenticatedSession, RequestUser, SessionCheck};
pub use jwt::{Claims, JwtKeys};
