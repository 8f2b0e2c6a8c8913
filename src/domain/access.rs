//! What a caller holds: roles and the union of their permissions, and the escalation rule
//! that decides what it may hand on.
use serde::Serialize;

use super::role::ADMIN_ROLE;

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

/// Shared so a session's access is cloned by reference count on the hot path.
pub type SharedAccess = std::sync::Arc<Access>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BUILTIN_PERMISSIONS;

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
}
