//! Role names and permissions: what the admin API accepts and the Redis session hash stores.

/// The role every account holds from registration on.
pub const USER_ROLE: &str = "user";
/// The built-in role that holds every permission of sessiond's own admin API.
pub const ADMIN_ROLE: &str = "admin";

/// Every permission sessiond itself checks, sorted: the one definition lives in the `entities`
/// crate, so the migrations (which seed the `admin` role) read the same list as the server.
pub use entities::permissions::BUILTIN_PERMISSIONS;

/// A role name: short, lower-case, safe in URLs, logs and the comma-joined Redis field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(name: String) -> Result<Self, String> {
        let mut chars = name.chars();
        let ok = name.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self(name))
        } else {
            Err("role names are 1 to 64 characters: a lower-case letter, then lower-case letters, digits, '_' or '-'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A permission: `resource:action`, e.g. `users:read` or `billing:*`; sessiond's own are
/// [`BUILTIN_PERMISSIONS`], others are for the services behind it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission(String);

impl Permission {
    pub fn parse(p: String) -> Result<Self, String> {
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
            Some((resource, action))
                if p.len() <= 64 && part(resource, false) && part(action, true) =>
            {
                Ok(Self(p))
            }
            _ => Err(
                "permissions look like `resource:action` (lower-case letters, digits, '_', '-'; at most 64 characters)"
                    .into(),
            ),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_permissions_are_validated() {
        for ok in ["user", "support-2", "a_b"] {
            assert!(RoleName::parse(ok.into()).is_ok(), "{ok}");
        }
        for bad in ["", "Admin", "2fa", "a,b", "a b", &"x".repeat(65)] {
            assert!(RoleName::parse(bad.into()).is_err(), "{bad}");
        }
        for ok in ["users:read", "billing:*", "a1:b_c-d"] {
            assert!(Permission::parse(ok.into()).is_ok(), "{ok}");
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
            assert!(Permission::parse(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_builtin_permissions_are_valid_permissions() {
        for p in BUILTIN_PERMISSIONS {
            assert!(Permission::parse(p.to_string()).is_ok(), "{p}");
        }
    }
}
