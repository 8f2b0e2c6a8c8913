//! What a caller may do: roles, the permissions they grant, and the typed extractor
//! [`Authorized<P>`] that makes a handler unreachable without permission `P`.
use std::{future::Future, marker::PhantomData, pin::Pin, sync::Arc};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use serde::Serialize;

use super::AuthenticatedSession;
use crate::{
    audit::{AuditEvent, AuditLog},
    error::ApiError,
};

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

    /// Whether this access may hand `permission` on, or act on an account holding it (the
    /// escalation rule: nobody grants, removes or overrides what they do not hold themselves).
    ///
    /// A permission is held when it is in [`Access::permissions`] exactly (what
    /// [`Access::allows`] checks: `billing:*` does not hold `billing:read`). The built-in
    /// `admin` role is the root: its holder holds every permission, also the custom ones of
    /// services behind sessiond, so an admin can create and grant a `billing:read` role without
    /// holding it. Nobody else is root, not even an account whose roles grant every permission
    /// sessiond defines: only an `admin` can grant, remove, or act on a holder of, `admin`.
    pub fn holds(&self, permission: &str) -> bool {
        self.is_root() || self.allows(permission)
    }

    /// Holds the `admin` role, the root of delegation (see [`Access::holds`]).
    pub fn is_root(&self) -> bool {
        self.has_role(ADMIN_ROLE)
    }

    /// What this access would need to hold `permissions` (and, with `root`, the `admin` role);
    /// empty when it holds them all.
    pub fn shortfall<'a>(
        &self,
        permissions: impl IntoIterator<Item = &'a str>,
        root: bool,
    ) -> Shortfall {
        let mut missing: Vec<String> = permissions
            .into_iter()
            .filter(|p| !self.holds(p))
            .map(str::to_string)
            .collect();
        missing.sort();
        missing.dedup();
        Shortfall {
            permissions: missing,
            admin_role: root && !self.is_root(),
        }
    }

    /// What this access lacks of everything `other` holds.
    pub fn shortfall_to(&self, other: &Access) -> Shortfall {
        self.shortfall(
            other.permissions.iter().map(String::as_str),
            other.is_root(),
        )
    }
}

/// What a caller lacks to do something under the escalation rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shortfall {
    /// Permissions it does not hold, sorted.
    pub permissions: Vec<String>,
    /// The `admin` role is needed (granting, removing or acting on a holder of it).
    pub admin_role: bool,
}

impl Shortfall {
    pub fn is_empty(&self) -> bool {
        self.permissions.is_empty() && !self.admin_role
    }
}

/// A permission of sessiond's admin API, as a type, so that the check is part of a handler's
/// signature and cannot be forgotten.
pub trait Permission {
    const NAME: &'static str;
}

/// Every permission sessiond itself checks, sorted: the one definition lives in the `entities`
/// crate, so the migrations (which seed the `admin` role) read the same list as the server.
pub use entities::permissions::BUILTIN_PERMISSIONS;

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
    SessionsRevoke => SESSIONS_REVOKE,
    UsersRead => USERS_READ,
    UsersWrite => USERS_WRITE,
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
                    AuditEvent::denied("access_denied")
                        .actor(session.user_id)
                        .ip(crate::routes::client_ip(&req, &denials.trusted_proxies))
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
    fn the_permission_types_are_exactly_the_builtin_list() {
        let mut typed = TYPED_PERMISSIONS.to_vec();
        typed.sort();
        assert_eq!(typed, BUILTIN_PERMISSIONS);
    }

    #[test]
    fn only_what_is_held_can_be_handed_on_and_admin_is_the_root() {
        let delegate = Access::new(
            vec!["user".into(), "helpdesk".into()],
            vec!["users:write".into(), "billing:*".into()],
        );
        let target = Access::new(
            vec!["user".into(), "ops".into()],
            vec!["users:write".into(), "billing:read".into()],
        );
        assert_eq!(
            delegate.shortfall_to(&target),
            Shortfall {
                permissions: vec!["billing:read".into()],
                admin_role: false
            },
            "a wildcard string does not hold the permissions it looks like"
        );
        assert!(target.shortfall_to(&delegate).permissions == ["billing:*"]);
        assert!(delegate.shortfall(["users:write"], false).is_empty());
        let admin = Access::new(vec!["admin".into(), "user".into()], vec![]);
        assert!(admin.shortfall_to(&target).is_empty());
        assert!(admin.holds("billing:read"));
        // Every permission but not the role: an admin stays out of reach.
        let all = Access::new(
            vec!["user".into(), "all".into()],
            BUILTIN_PERMISSIONS.iter().map(|p| p.to_string()).collect(),
        );
        let real_admin = Access::new(
            vec!["admin".into(), "user".into()],
            BUILTIN_PERMISSIONS.iter().map(|p| p.to_string()).collect(),
        );
        let s = all.shortfall_to(&real_admin);
        assert!(s.permissions.is_empty() && s.admin_role);
        assert!(!s.is_empty());
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
