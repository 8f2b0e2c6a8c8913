//! What a caller may do: roles, the permissions they grant, and the typed extractor
//! [`Authorized<P>`] that makes a handler unreachable without permission `P`.
use std::{future::Future, marker::PhantomData, pin::Pin, sync::Arc};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use serde::Serialize;

use super::AuthenticatedSession;
use crate::{audit::AuditEvent, error::ApiError, state::AppState};

/// The role every account holds from registration on.
pub const USER_ROLE: &str = "user";
/// The built-in role that holds every permission of sessiond's own admin API.
pub const ADMIN_ROLE: &str = "admin";

/// A session's roles and the union of their permissions, both sorted and de-duplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Access {
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
}

impl Access {
    pub fn new(mut roles: Vec<String>, mut permissions: Vec<String>) -> Self {
        roles.sort();
        roles.dedup();
        permissions.sort();
        permissions.dedup();
        Self { roles, permissions }
    }

    pub fn allows(&self, permission: &str) -> bool {
        self.permissions
            .binary_search_by(|p| p.as_str().cmp(permission))
            .is_ok()
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A permission of sessiond's admin API, as a type, so that the check is part of a handler's
/// signature and cannot be forgotten.
pub trait Permission {
    const NAME: &'static str;
}

macro_rules! permissions {
    ($($ty:ident => $name:literal),* $(,)?) => {
        $(
            #[doc = concat!("The `", $name, "` permission.")]
            pub struct $ty;
            impl Permission for $ty {
                const NAME: &'static str = $name;
            }
        )*
        /// Every permission sessiond itself checks (the built-in `admin` role holds them all).
        pub const BUILTIN_PERMISSIONS: &[&str] = &[$($name),*];
    };
}

permissions! {
    AuditRead => "audit:read",
    SessionsRevoke => "sessions:revoke",
    UsersRead => "users:read",
    UsersWrite => "users:write",
}

/// Role names: short, lower-case, safe in URLs, logs and the comma-joined Redis field.
pub fn validate_role_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err("role names are 1 to 64 characters: a lower-case letter, then lower-case letters, digits, '_' or '-'".into())
    }
}

/// Permissions are `resource:action`, e.g. `users:read` or `billing:*`.
pub fn validate_permission(p: &str) -> Result<(), String> {
    let part = |s: &str, wildcard: bool| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || (wildcard && c == '*'))
            && chars.all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || c == '_'
                    || c == '-'
                    || (wildcard && c == '*')
            })
    };
    match p.split_once(':') {
        Some((resource, action)) if p.len() <= 64 && part(resource, false) && part(action, true) => {
            Ok(())
        }
        _ => Err(
            "permissions look like `resource:action` (lower-case letters, digits, '_', '-'; at most 64 characters)"
                .into(),
        ),
    }
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
            if let Some(state) = req.app_data::<web::Data<AppState>>() {
                state.audit.record(
                    AuditEvent::denied("access_denied")
                        .actor(session.user_id)
                        .ip(state.client_ip(&req))
                        .detail(serde_json::json!({
                            "permission": P::NAME,
                            "route": req.match_pattern().unwrap_or_default(),
                            "method": req.method().as_str(),
                        })),
                );
            }
            Err(ApiError::Forbidden)
        })
    }
}

/// Shared so a session's access is cloned by reference count on the hot path.
pub type SharedAccess = Arc<Access>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_is_sorted_and_checked_by_binary_search() {
        let a = Access::new(
            vec!["user".into(), "admin".into(), "user".into()],
            vec![
                "users:write".into(),
                "audit:read".into(),
                "users:read".into(),
            ],
        );
        assert_eq!(a.roles, ["admin", "user"]);
        assert!(a.allows("audit:read") && a.allows("users:write"));
        assert!(!a.allows("sessions:revoke"));
        assert!(a.has_role("admin"));
    }

    #[test]
    fn names_and_permissions_are_validated() {
        for ok in ["user", "support-2", "a_b"] {
            assert!(validate_role_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Admin", "2fa", "a,b", "a b", &"x".repeat(65)] {
            assert!(validate_role_name(bad).is_err(), "{bad}");
        }
        for ok in ["users:read", "billing:*", "a1:b_c-d"] {
            assert!(validate_permission(ok).is_ok(), "{ok}");
        }
        for bad in [
            "users",
            ":read",
            "users:",
            "Users:read",
            "*:read",
            "a:b:c",
            "a,b:c",
        ] {
            assert!(validate_permission(bad).is_err(), "{bad}");
        }
    }
}
