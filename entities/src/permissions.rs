//! sessiond's own permissions: the one definition that the server (its typed permission checks),
//! the migrations (the seeded `admin` role), the start-up sync of the `admin` role and the tests
//! all read. Adding a permission here is enough for every deployment's `admin` role to hold it.

pub const AUDIT_READ: &str = "audit:read";
/// Managing the service clients that may call POST /introspect.
pub const CLIENTS_WRITE: &str = "clients:write";
pub const SESSIONS_REVOKE: &str = "sessions:revoke";
pub const USERS_READ: &str = "users:read";
pub const USERS_WRITE: &str = "users:write";

/// Every permission sessiond itself checks, sorted; the built-in `admin` role holds them all.
pub const BUILTIN_PERMISSIONS: &[&str] = &[
    AUDIT_READ,
    CLIENTS_WRITE,
    SESSIONS_REVOKE,
    USERS_READ,
    USERS_WRITE,
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_list_is_sorted_and_unique() {
        assert!(super::BUILTIN_PERMISSIONS.windows(2).all(|w| w[0] < w[1]));
    }
}
