//! The kinds of audit events. Their names are stored with every event and returned by
//! GET /admin/audit (and accepted by its `type` filter): they never change.

/// What an audit event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// A caller without a route's permission (403).
    AccessDenied,
    /// Repeated failures locked an account's logins.
    AccountLocked,
    /// A service client created (POST /admin/clients).
    ClientCreate,
    /// A service client deleted.
    ClientDelete,
    /// An identity at a provider linked to an account (POST /profile/identities/.../start).
    IdentityLink,
    /// An identity unlinked (DELETE /profile/identities/{provider}).
    IdentityUnlink,
    Login,
    Logout,
    LogoutAll,
    /// A TOTP authenticator removed (DELETE /mfa/totp).
    MfaDisable,
    /// A TOTP authenticator confirmed (POST /mfa/totp/confirm); pending ones are not audited.
    MfaEnrol,
    /// A second factor presented (POST /login/mfa): success or failure, with the method.
    MfaVerify,
    PasswordChange,
    /// POST /reauthenticate: the session's authentication renewed, or refused (with the reason).
    Reauthenticate,
    /// A rotated refresh token presented again after the grace window.
    RefreshReuse,
    Register,
    RoleChange,
    RoleCreate,
    /// One session ended (by its owner, or the oldest beyond MAX_SESSIONS_PER_USER).
    SessionRevoke,
    /// Every session of an account ended by an admin.
    SessionsRevoke,
    /// An account created by `sessiond user create`.
    UserCreate,
    /// A password-reset link asked for (POST /password/forgot), for an existing account.
    PasswordResetRequest,
    /// A password set through a mailed reset link.
    PasswordReset,
    /// An address verified through a mailed link, or a verification mail sent again.
    EmailVerify,
    /// An email change asked for (PUT /profile/email) or completed through the mailed link.
    EmailChange,
    UserDelete,
    UserDisable,
    UserEnable,
    /// An admin removed an account's second factors (DELETE /admin/users/{id}/mfa).
    MfaReset,
}

impl AuditKind {
    pub const ALL: [AuditKind; 29] = [
        Self::AccessDenied,
        Self::AccountLocked,
        Self::ClientCreate,
        Self::ClientDelete,
        Self::IdentityLink,
        Self::IdentityUnlink,
        Self::Login,
        Self::Logout,
        Self::LogoutAll,
        Self::MfaDisable,
        Self::MfaEnrol,
        Self::MfaVerify,
        Self::PasswordChange,
        Self::RefreshReuse,
        Self::Register,
        Self::RoleChange,
        Self::RoleCreate,
        Self::SessionRevoke,
        Self::SessionsRevoke,
        Self::UserCreate,
        Self::UserDelete,
        Self::UserDisable,
        Self::UserEnable,
        Self::PasswordResetRequest,
        Self::PasswordReset,
        Self::EmailVerify,
        Self::EmailChange,
        Self::MfaReset,
        Self::Reauthenticate,
    ];

    /// The stored and served name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AccessDenied => "access_denied",
            Self::AccountLocked => "account_locked",
            Self::ClientCreate => "client_create",
            Self::ClientDelete => "client_delete",
            Self::IdentityLink => "identity_link",
            Self::IdentityUnlink => "identity_unlink",
            Self::Login => "login",
            Self::Logout => "logout",
            Self::LogoutAll => "logout_all",
            Self::MfaDisable => "mfa_disable",
            Self::MfaEnrol => "mfa_enrol",
            Self::MfaVerify => "mfa_verify",
            Self::PasswordChange => "password_change",
            Self::RefreshReuse => "refresh_reuse",
            Self::Register => "register",
            Self::RoleChange => "role_change",
            Self::RoleCreate => "role_create",
            Self::SessionRevoke => "session_revoke",
            Self::SessionsRevoke => "sessions_revoke",
            Self::UserCreate => "user_create",
            Self::UserDelete => "user_delete",
            Self::UserDisable => "user_disable",
            Self::UserEnable => "user_enable",
            Self::PasswordResetRequest => "password_reset_request",
            Self::PasswordReset => "password_reset",
            Self::EmailVerify => "email_verify",
            Self::EmailChange => "email_change",
            Self::MfaReset => "mfa_reset",
            Self::Reauthenticate => "reauthenticate",
        }
    }
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::AuditKind;

    /// The names are a stored and served contract: this list changes only by adding to it.
    #[test]
    fn the_wire_names_are_the_stored_ones() {
        let names: Vec<&str> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "access_denied",
                "account_locked",
                "client_create",
                "client_delete",
                "identity_link",
                "identity_unlink",
                "login",
                "logout",
                "logout_all",
                "mfa_disable",
                "mfa_enrol",
                "mfa_verify",
                "password_change",
                "refresh_reuse",
                "register",
                "role_change",
                "role_create",
                "session_revoke",
                "sessions_revoke",
                "user_create",
                "user_delete",
                "user_disable",
                "user_enable",
                "password_reset_request",
                "password_reset",
                "email_verify",
                "email_change",
                "mfa_reset",
                "reauthenticate",
            ]
        );
        assert!(
            names.iter().all(|n| n.len() <= 32),
            "GET /admin/audit's type filter"
        );
    }
}
