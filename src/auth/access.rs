//! What a caller may do: roles, the permissions they grant, and the typed extractor
//! [`Authorized<P>`] that makes a handler unreachable without permission `P`.
use std::{future::Future, marker::PhantomData, pin::Pin};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::AuthenticatedSession;
use crate::{
    audit::{AuditEvent, AuditLog},
    domain::AuditKind,
    error::ApiError,
};

pub use crate::domain::{Access, Shortfall, ADMIN_ROLE, BUILTIN_PERMISSIONS, USER_ROLE};

/// A permission of sessiond's admin API, as a type, so that the check is part of a handler's
/// signature and cannot be forgotten.
pub trait Permission {
    const NAME: &'static str;
}

macro_rules! permissions {
    ($($ty:ident => $name:ident),* $(,)?) => {
        $(
            #[doc = concat!("The permission [`entities::permissions::", stringify!($name), "`].")]
            pub struct $ty;
            impl Permission for $ty {
                const NAME: &'static str = entities::permissions::$name;
            }
        )*
        /// The permission types, for the test that they cover exactly [`BUILTIN_PERMISSIONS`].
        #[cfg(test)]
        const TYPED_PERMISSIONS: &[&str] = &[$(entities::permissions::$name),*];
    };
}

permissions! {
    AuditRead => AUDIT_READ,
    ClientsWrite => CLIENTS_WRITE,
    SessionsRevoke => SESSIONS_REVOKE,
    UsersRead => USERS_READ,
    UsersWrite => USERS_WRITE,
}

/// What [`Authorized`] reads when it refuses a caller, registered as its own app data
/// (`web::Data<DenialAudit>`): where the denial is recorded, and the proxies whose
/// X-Forwarded-For names the caller's address.
#[derive(Clone)]
pub struct DenialAudit {
    pub audit: AuditLog,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// An authenticated session that holds permission `P`; otherwise 403 `forbidden` (and 401 for
/// no valid session at all). Denials are audited.
pub struct Authorized<P: Permission> {
    pub session: AuthenticatedSession,
    _permission: PhantomData<P>,
}

impl<P: Permission> std::ops::Deref for Authorized<P> {
    type Target = AuthenticatedSession;

    fn deref(&self) -> &AuthenticatedSession {
        &self.session
    }
}

impl<P: Permission + 'static> FromRequest for Authorized<P> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let session = AuthenticatedSession::from_request(req, payload);
        let req = req.clone();
        Box::pin(async move {
            let session = session.await?;
            if session.access.allows(P::NAME) {
                return Ok(Authorized {
                    session,
                    _permission: PhantomData,
                });
            }
            if let Some(denials) = req.app_data::<web::Data<DenialAudit>>() {
                let route = req.match_pattern().unwrap_or_default();
                let method = req.method().as_str();
                // Aggregated: a loop of 403s is a few counted rows, not one row per request.
                denials.audit.record_denial(
                    format!("{method} {route} {}", P::NAME),
                    AuditEvent::denied(AuditKind::AccessDenied)
                        .actor(session.user_id)
                        .ip(crate::auth::client_ip(&req, &denials.trusted_proxies))
                        .detail(serde_json::json!({
                            "permission": P::NAME,
                            "route": route,
                            "method": method,
                        })),
                );
            }
            Err(ApiError::Forbidden)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permission_types_are_exactly_the_builtin_list() {
        let mut typed = TYPED_PERMISSIONS.to_vec();
        typed.sort();
        assert_eq!(typed, BUILTIN_PERMISSIONS);
    }
}
