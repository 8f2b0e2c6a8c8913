//! Authentication and authorization: JWT issue/verify, the extractor that turns a bearer token
//! into an [`AuthenticatedSession`], and [`Authorized<P>`] for permission checks.
pub mod access;
pub mod extractor;
pub mod jwt;

pub use access::{Access, Authorized, DenialAudit, SharedAccess};
pub use extractor::{AuthenticatedSession, SessionCheck};
pub use jwt::{Claims, JwtKeys};
