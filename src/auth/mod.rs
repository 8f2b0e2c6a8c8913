//! Authentication: JWT issue/verify and the extractor that turns a bearer token into an
//! [`AuthenticatedSession`].
pub mod extractor;
pub mod jwt;

pub use extractor::AuthenticatedSession;
pub use jwt::{Claims, JwtKeys};
