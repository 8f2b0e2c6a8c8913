//! The admin operations: accounts, their roles and sessions, roles, the audit trail, and the
//! ADMIN_EMAILS grant at start-up. The caller holds the operation's permission (checked by the
//! route); on top of it, every change obeys the escalation rule (in the spirit of Kubernetes
//! RBAC escalation prevention): a caller grants, removes or creates only roles whose every
//! permission it holds, never changes its own roles, and does not disable, enable, delete,
//! change the roles of, revoke the sessions of or reset the factors of an account holding
//! anything it does not hold ([`Access::holds`]; the `admin` role is the root). Refusals are 403 `forbidden`, audited as
//! denied events of the operation's kind with `detail.reason` and what was missing.
use uuid::Uuid;

use super::{sessions::sync_session_access, App, Caller};
use crate::actor::Ask;
use crate::{
    audit::{AuditEvent, AuditEventView, ListAudit},
    domain::{Access, AuditKind, PageRequest, Permission, RoleName, Shortfall, ADMIN_ROLE},
    error::ApiError,
    mail::Template,
    session::{CutOff, IsCutOff, ListSessions, Restore, RevokeAll, SessionRecord},
    users::{
        normalize_roles, AdminUser, CheckRemovable, CreateRole, DeleteUser, FindAccess,
        FindAccount, GetUser, GrantRole, ListRoles, ListUsers, ResetFactors, RoleChange, RoleView,
        SetDisabled, SetRoles, UserStoreError,
    },
    webhooks::Event,
};

/// The audit records of one admin call: the admin is the actor, the account acted on the subject.
struct AdminAudit<'a> {
    app: &'a App,
    actor: Uuid,
    subject: Option<Uuid>,
    ip: Option<String>,
}

impl<'a> AdminAudit<'a> {
    fn new(app: &'a App, admin: &Caller, subject: Option<Uuid>) -> Self {
        Self {
            app,
            actor: admin.user_id,
            subject,
            ip: admin.ip.clone(),
        }
    }

    fn record(&self, event: AuditEvent) {
        self.app.audit.record(
            event
                .actor(self.actor)
                .subject(self.subject)
                .ip(self.ip.clone()),
        );
    }

    /// A change refused by the escalation rule: recorded as a denied `kind` (aggregated, since a
    /// caller can repeat it in a loop) and answered 403.
    fn escalation(
        &self,
        kind: AuditKind,
        reason: &'static str,
        shortfall: &Shortfall,
        extra: serde_json::Value,
    ) -> ApiError {
        let mut detail = serde_json::json!({
            "reason": reason,
            "missing_permissions": shortfall.permissions,
            "admin_role_required": shortfall.admin_role,
        });
        if let (Some(d), serde_json::Value::Object(extra)) = (detail.as_object_mut(), extra) {
            d.extend(extra);
        }
        let subject = self.subject.map(|s| s.to_string()).unwrap_or_default();
        self.app.audit.record_denial(
            format!("{reason} {subject}"),
            AuditEvent::denied(kind)
                .actor(self.actor)
                .subject(self.subject)
                .ip(self.ip.clone())
                .detail(detail),
        );
        ApiError::Forbidden
    }

    /// The escalation rule for acting on the account: the caller must hold everything it holds.
    /// An account that no longer exists holds nothing; what the operation does then is its own
    /// business (e.g. 404).
    async fn ensure_outranks(
        &self,
        caller: &Access,
        kind: AuditKind,
        target: Uuid,
    ) -> Result<(), ApiError> {
        let Some(account) = self.app.users.ask(FindAccess(target)).await? else {
            return Ok(());
        };
        let shortfall = caller.shortfall_to(&account.access);
        if shortfall.is_empty() {
            return Ok(());
        }
        Err(self.escalation(kind, "escalation", &shortfall, serde_json::json!({})))
    }

    /// A change refused by the last-admin rule is recorded as denied (with `detail`) and
    /// answered 409; other results pass through.
    fn refused<T>(
        &self,
        kind: AuditKind,
        detail: impl FnOnce() -> serde_json::Value,
        result: Result<T, UserStoreError>,
    ) -> Result<T, ApiError> {
        if let Err(UserStoreError::Conflict(_)) = &result {
            self.record(AuditEvent::denied(kind).detail(detail()));
        }
        result.map_err(ApiError::from)
    }
}

/// One page of accounts whose (normalized) email starts with `email_prefix`, ordered by email.
pub async fn list_users(
    app: &App,
    email_prefix: Option<String>,
    page: PageRequest,
) -> Result<(Vec<AdminUser>, u64), ApiError> {
    Ok(app.users.ask(ListUsers { email_prefix, page }).await?)
}

/// One account, with `disabled`.
pub async fn get_user(app: &App, user_id: Uuid) -> Result<AdminUser, ApiError> {
    Ok(app.users.ask(GetUser(user_id)).await?)
}

/// Replaces an account's roles (`user` is always kept); every live session of the account
/// carries them from its next request on, on every pod. Refused (403) for the caller's own
/// account, for an account holding a permission the caller lacks, and for granting or removing
/// a role with such a permission; (409) when it would leave no enabled admin.
pub async fn set_roles(
    app: &App,
    admin: &Caller,
    user_id: Uuid,
    roles: Vec<RoleName>,
) -> Result<AdminUser, ApiError> {
    let audit = AdminAudit::new(app, admin, Some(user_id));
    let requested = normalize_roles(roles.into_iter().map(RoleName::into_inner).collect());
    if user_id == admin.user_id {
        // Even an admin: a role change is always someone else's decision, and the last-admin
        // rule then needs no special case for stepping down.
        return Err(audit.escalation(
            AuditKind::RoleChange,
            "own_roles",
            &Shortfall::default(),
            serde_json::json!({"roles": requested, "previous": admin.access.roles}),
        ));
    }
    // Nothing changes when the change is refused, so the roles now are the ones it would replace.
    let current = app.users.ask(GetUser(user_id)).await?;
    let result = app
        .users
        .ask(SetRoles {
            user_id,
            roles: requested.clone(),
            by: Some(Access::clone(&admin.access)),
            webhooks: app.webhooks.clone(),
        })
        .await;
    let change = audit.refused(
        AuditKind::RoleChange,
        || serde_json::json!({"roles": requested, "previous": current.roles}),
        result,
    )?;
    let (user, previous) = match change {
        RoleChange::Done { user, previous } => (user, previous),
        RoleChange::Refused {
            shortfall,
            previous,
        } => {
            return Err(audit.escalation(
                AuditKind::RoleChange,
                "escalation",
                &shortfall,
                serde_json::json!({"roles": requested, "previous": previous}),
            ))
        }
    };
    if user.roles != previous {
        audit.record(
            AuditEvent::success(AuditKind::RoleChange)
                .detail(serde_json::json!({"roles": user.roles, "previous": previous})),
        );
        // `user.roles_changed` committed with the change (see `SetRoles`).
        app.webhooks.wake();
    }
    // Also when nothing changed: a retry after a failed session update completes it.
    sync_session_access(app, user_id).await?;
    Ok(user)
}

/// Disables an account: no logins, and every session ends on every pod. The sessions end
/// first: after any answer, an error included, the account has no session that works or
/// refreshes; an error may leave it cut off without being marked disabled, until a retry
/// completes it.
pub async fn disable_user(app: &App, admin: &Caller, user_id: Uuid) -> Result<(), ApiError> {
    let kind = AuditKind::UserDisable;
    let audit = AdminAudit::new(app, admin, Some(user_id));
    audit.ensure_outranks(&admin.access, kind, user_id).await?;
    let what = "disabling this account";
    let change = || {
        app.users.ask(SetDisabled {
            user_id,
            disabled: true,
            webhooks: app.webhooks.clone(),
        })
    };
    let changed = cut_off_then(app, &audit, kind, user_id, what, change).await?;
    if changed {
        audit.record(AuditEvent::success(kind));
        // `user.disabled` committed with the change (see `SetDisabled`).
        app.webhooks.wake();
        // An enable racing with this disable may have lifted the marker between the two steps
        // (and a login slipped in): now that the database says disabled, cut off once more.
        app.sessions.ask(CutOff(user_id)).await?;
    }
    Ok(())
}

/// Enables a disabled account: it can log in again. Database first, then the marker: if the
/// second step fails the account stays cut off (fail closed) and a retry completes it.
pub async fn enable_user(app: &App, admin: &Caller, user_id: Uuid) -> Result<(), ApiError> {
    let kind = AuditKind::UserEnable;
    let audit = AdminAudit::new(app, admin, Some(user_id));
    audit.ensure_outranks(&admin.access, kind, user_id).await?;
    let result = app
        .users
        .ask(SetDisabled {
            user_id,
            disabled: false,
            webhooks: app.webhooks.clone(),
        })
        .await;
    if audit.refused(kind, || serde_json::json!({}), result)? {
        audit.record(AuditEvent::success(kind));
    }
    app.sessions.ask(Restore(user_id)).await?;
    Ok(())
}

/// Deletes an account: its sessions end on every pod (first, as when disabling); its audit
/// events stay.
pub async fn delete_user(app: &App, admin: &Caller, user_id: Uuid) -> Result<(), ApiError> {
    let kind = AuditKind::UserDelete;
    let audit = AdminAudit::new(app, admin, Some(user_id));
    audit.ensure_outranks(&admin.access, kind, user_id).await?;
    let change = || {
        app.users.ask(DeleteUser {
            user_id,
            webhooks: app.webhooks.clone(),
        })
    };
    let what = "deleting this account";
    let deleted = cut_off_then(app, &audit, kind, user_id, what, change).await;
    if let Err(ApiError::NotFound(_)) = &deleted {
        // Gone already, perhaps by an earlier attempt whose answer was lost, or by a version
        // that deleted before revoking: end whatever sessions are left before saying 404.
        app.sessions
            .ask(RevokeAll {
                user_id,
                except: None,
            })
            .await?;
    }
    deleted?;
    audit.record(AuditEvent::success(kind));
    // `user.deleted` committed with the change (see `DeleteUser`).
    app.webhooks.wake();
    Ok(())
}

/// Disabling and deleting: the account's sessions are revoked and it is marked cut off (no
/// session is created or refreshed) in one atomic step BEFORE the database changes, so whatever
/// the answer (a 503 included), a disabled or deleted account has no usable session. If the
/// database step fails, the account stays cut off (fail closed) and a retry completes it; if it
/// is refused by the last-admin rule (a race the read-only check before missed), the mark is
/// lifted again. Also when the account was disabled already, so a retry completes everything.
/// `change` is a closure because actix enqueues a message when `send` is called, not when the
/// returned future is first polled.
async fn cut_off_then<T, F>(
    app: &App,
    audit: &AdminAudit<'_>,
    kind: AuditKind,
    user_id: Uuid,
    what: &'static str,
    change: impl FnOnce() -> F,
) -> Result<T, ApiError>
where
    F: std::future::Future<Output = Result<T, UserStoreError>>,
{
    let check = app.users.ask(CheckRemovable { user_id, what }).await;
    audit.refused(kind, || serde_json::json!({}), check)?;
    app.sessions.ask(CutOff(user_id)).await?;
    let result = change().await;
    if let Err(UserStoreError::Conflict(_)) = &result {
        app.sessions.ask(Restore(user_id)).await?;
    }
    audit.refused(kind, || serde_json::json!({}), result)
}

/// An account's live sessions, oldest first; 404 for no such account.
pub async fn list_user_sessions(app: &App, user_id: Uuid) -> Result<Vec<SessionRecord>, ApiError> {
    app.users.ask(GetUser(user_id)).await?;
    Ok(app.sessions.ask(ListSessions(user_id)).await?)
}

/// Ends every session of an account, on every pod; also of a deleted account (whatever may be
/// left of it). 404 only for an id that never had an account or a session.
pub async fn revoke_user_sessions(
    app: &App,
    admin: &Caller,
    user_id: Uuid,
) -> Result<(), ApiError> {
    let kind = AuditKind::SessionsRevoke;
    let audit = AdminAudit::new(app, admin, Some(user_id));
    audit.ensure_outranks(&admin.access, kind, user_id).await?;
    let exists = match app.users.ask(GetUser(user_id)).await {
        Ok(_) => true,
        Err(UserStoreError::NotFound) => false,
        Err(e) => return Err(e.into()),
    };
    let event = Event::sessions_revoked(user_id, "admin", None);
    if exists {
        // Sessions live in Redis: the event is stored ahead of the revocation.
        app.webhooks
            .write_ahead(std::slice::from_ref(&event))
            .await?;
    }
    let revoked = app
        .sessions
        .ask(RevokeAll {
            user_id,
            except: None,
        })
        .await?;
    // A deleted account's id (still marked cut off, or with sessions left) is not unknown:
    // revoking what is left of it succeeds. An id that never had anything stays 404.
    if !exists && revoked == 0 && !app.sessions.ask(IsCutOff(user_id)).await? {
        return Err(ApiError::NotFound("user"));
    }
    audit.record(AuditEvent::success(kind).detail(serde_json::json!({ "revoked": revoked })));
    if !exists {
        // What was left of a deleted account: reported once it is known to be something (an
        // unknown id, 404 above, reports nothing).
        app.webhooks.emit_after(event).await;
    }
    Ok(())
}

/// Removes every second factor of an account (its TOTP authenticator and recovery codes), for a
/// user who lost them: the password alone logs in until it enrols again. Its sessions live on
/// (revoke them separately if the account may be compromised). The owner's notice and the
/// `user.mfa_reset` event are stored in the removal's transaction. Idempotent: an account
/// without a factor answers the same, and nothing is audited, mailed or sent then. Refused
/// (403) for the caller's own account (DELETE /mfa/totp is the owner's way) and for an account
/// holding a permission the caller lacks; 404 for no such account.
pub async fn reset_factors(app: &App, admin: &Caller, user_id: Uuid) -> Result<(), ApiError> {
    let kind = AuditKind::MfaReset;
    let audit = AdminAudit::new(app, admin, Some(user_id));
    if user_id == admin.user_id {
        return Err(audit.escalation(
            kind,
            "own_factors",
            &Shortfall::default(),
            serde_json::json!({}),
        ));
    }
    audit.ensure_outranks(&admin.access, kind, user_id).await?;
    let account = app
        .users
        .ask(FindAccount(user_id))
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let mail = super::notices::notice(app, Template::MfaReset, &account, &[]);
    let removed = app
        .users
        .ask(ResetFactors {
            user_id,
            mail,
            webhooks: app.webhooks.clone(),
        })
        .await?;
    if removed.is_empty() {
        return Ok(());
    }
    // The notice and `user.mfa_reset` committed with the removal (see `ResetFactors`).
    app.mailer.wake();
    app.webhooks.wake();
    audit.record(AuditEvent::success(kind).detail(serde_json::json!({ "methods": removed })));
    tracing::info!(%user_id, methods = ?removed, "second factors reset by an admin");
    Ok(())
}

/// Every role with its permissions, ordered by name.
pub async fn list_roles(app: &App) -> Result<Vec<RoleView>, ApiError> {
    Ok(app.users.ask(ListRoles).await?)
}

/// Creates a role. Roles cannot be changed afterwards (create a new one and reassign), so the
/// permissions a session carries always match its roles. Refused (403) with a permission the
/// caller does not hold (holders of `admin` hold every permission); (409) for a taken name.
pub async fn create_role(
    app: &App,
    admin: &Caller,
    name: RoleName,
    permissions: Vec<Permission>,
) -> Result<RoleView, ApiError> {
    let name = name.into_inner();
    let permissions: Vec<String> = permissions
        .into_iter()
        .map(Permission::into_inner)
        .collect();
    let audit = AdminAudit::new(app, admin, None);
    let shortfall = admin
        .access
        .shortfall(permissions.iter().map(String::as_str), false);
    if !shortfall.is_empty() {
        return Err(audit.escalation(
            AuditKind::RoleCreate,
            "escalation",
            &shortfall,
            serde_json::json!({"name": name, "permissions": permissions}),
        ));
    }
    let role = app.users.ask(CreateRole { name, permissions }).await?;
    audit.record(
        AuditEvent::success(AuditKind::RoleCreate)
            .detail(serde_json::json!({"name": role.name, "permissions": role.permissions})),
    );
    Ok(role)
}

/// One page of the audit trail, newest first: events of one type, and where `user_id` is the
/// actor or the subject.
pub async fn list_audit(
    app: &App,
    user_id: Option<Uuid>,
    event_type: Option<String>,
    page: PageRequest,
) -> Result<(Vec<AuditEventView>, u64), ApiError> {
    Ok(app
        .users
        .ask(ListAudit {
            user_id,
            event_type,
            page,
        })
        .await?)
}

/// ADMIN_EMAILS at start-up: existing accounts listed there whose address is proven get
/// `admin` (idempotent, so pods starting together agree), and their live sessions carry it
/// from their next request on.
pub async fn grant_admin_emails(app: &App) -> Result<(), ApiError> {
    for email in &app.settings.admin_emails {
        grant_listed_admin(app, email).await?;
    }
    Ok(())
}

/// `admin` for the account of `email` if ADMIN_EMAILS lists it and its address is proven (a
/// mailed link used, a provider's verified claim, or `sessiond user create`): registration
/// proves nothing, so whoever registers a listed address first gets no admin role by it.
/// Returns whether the role was added now.
pub async fn grant_listed_admin(app: &App, email: &str) -> Result<bool, ApiError> {
    if !app.settings.admin_emails.iter().any(|e| e == email) {
        return Ok(false);
    }
    let granted = app
        .users
        .ask(GrantRole {
            email: email.to_string(),
            role: ADMIN_ROLE.to_string(),
            webhooks: app.webhooks.clone(),
        })
        .await?;
    let Some((user_id, previous)) = granted else {
        return Ok(false);
    };
    {
        let access = sync_session_access(app, user_id).await?;
        tracing::info!(%user_id, "granted the admin role (ADMIN_EMAILS)");
        let roles = access.map(|a| a.roles).unwrap_or_default();
        // `user.roles_changed` committed with the grant (see `GrantRole`).
        app.webhooks.wake();
        app.audit.record(
            AuditEvent::success(AuditKind::RoleChange)
                .subject(user_id)
                .detail(serde_json::json!({
                    "roles": roles,
                    "previous": previous,
                    "source": "ADMIN_EMAILS",
                })),
        );
    }
    Ok(true)
}
