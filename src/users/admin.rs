//! Roles, permissions, account administration and the audit trail's storage: the UserStore
//! messages behind the admin API. Changes that could leave no enabled admin run in a transaction
//! that first locks the `admin` role row (PostgreSQL; SQLite serializes writers anyway), so two
//! admins demoting each other at once cannot both succeed.
use std::collections::{BTreeSet, HashMap};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use entities::{audit_event, role, role_permission, user, user_role};
use sea_orm::{
    sea_query::{LikeExpr, OnConflict},
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

use super::{UserStore, UserStoreError};
use crate::{
    actor::Reply,
    audit::{AuditEvent, AuditEventView},
    auth::access::{Access, Shortfall, ADMIN_ROLE, BUILTIN_PERMISSIONS, USER_ROLE},
};

/// An account as administrators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdminUser {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub roles: Vec<String>,
    /// Union of the roles' permissions.
    pub permissions: Vec<String>,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoleView {
    #[schema(example = "support")]
    pub name: String,
    #[schema(example = json!(["users:read"]))]
    pub permissions: Vec<String>,
    /// `user` and `admin` are built in.
    pub builtin: bool,
}

/// One page of a list: `page` from 1.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub page: u64,
    pub per_page: u64,
}

/// Bounds on what one account holds: its roles and permissions travel in every access token,
/// which must stay under `auth::jwt::MAX_TOKEN_BYTES`.
pub const MAX_ACCOUNT_ROLES: usize = 16;
pub const MAX_ACCOUNT_PERMISSIONS: usize = 64;

/// Sorted, de-duplicated; every account holds `user`.
pub fn normalize_roles(roles: Vec<String>) -> Vec<String> {
    let mut set: BTreeSet<String> = roles.into_iter().collect();
    set.insert(USER_ROLE.to_string());
    set.into_iter().collect()
}

/// Checks that an account may hold exactly `roles`: they exist, and together they grant at most
/// [`MAX_ACCOUNT_PERMISSIONS`] (so that the access token stays small enough to be accepted).
pub(crate) async fn check_grant(
    conn: &impl ConnectionTrait,
    roles: &[String],
) -> Result<(), UserStoreError> {
    if roles.len() > MAX_ACCOUNT_ROLES {
        return Err(UserStoreError::Invalid(format!(
            "an account holds at most {MAX_ACCOUNT_ROLES} roles"
        )));
    }
    let found: BTreeSet<String> = role::Entity::find()
        .filter(role::Column::Name.is_in(roles.iter().cloned()))
        .all(conn)
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect();
    if let Some(missing) = roles.iter().find(|r| !found.contains(*r)) {
        return Err(UserStoreError::UnknownRole(missing.clone()));
    }
    let granted: BTreeSet<String> = permissions_of(conn, roles.iter().cloned())
        .await?
        .into_values()
        .flatten()
        .collect();
    if granted.len() > MAX_ACCOUNT_PERMISSIONS {
        return Err(UserStoreError::Invalid(format!(
            "these roles grant {} permissions together; an account holds at most {MAX_ACCOUNT_PERMISSIONS}",
            granted.len()
        )));
    }
    Ok(())
}

/// Adds the roles the account does not hold yet; returns how many were added.
pub(crate) async fn insert_roles(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
    roles: &[String],
) -> Result<u64, UserStoreError> {
    if roles.is_empty() {
        return Ok(0);
    }
    let rows = roles.iter().map(|r| user_role::ActiveModel {
        user_id: Set(user_id),
        role_name: Set(r.clone()),
    });
    user_role::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::columns([user_role::Column::UserId, user_role::Column::RoleName])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await
        .map_err(UserStoreError::from)
}

/// The sorted role names of each user; `user` is implied (an account registered by a pod of the
/// previous version during a rollout has no role rows).
pub(crate) async fn roles_of(
    conn: &impl ConnectionTrait,
    users: &[Uuid],
) -> Result<HashMap<Uuid, Vec<String>>, UserStoreError> {
    let rows = user_role::Entity::find()
        .filter(user_role::Column::UserId.is_in(users.iter().copied()))
        .all(conn)
        .await?;
    let mut out: HashMap<Uuid, Vec<String>> = users.iter().map(|u| (*u, Vec::new())).collect();
    for r in rows {
        out.entry(r.user_id).or_default().push(r.role_name);
    }
    Ok(out
        .into_iter()
        .map(|(u, roles)| (u, normalize_roles(roles)))
        .collect())
}

/// The sorted permissions of each role.
async fn permissions_of(
    conn: &impl ConnectionTrait,
    roles: impl IntoIterator<Item = String>,
) -> Result<HashMap<String, Vec<String>>, UserStoreError> {
    let rows = role_permission::Entity::find()
        .filter(role_permission::Column::RoleName.is_in(roles))
        .order_by_asc(role_permission::Column::Permission)
        .all(conn)
        .await?;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows {
        out.entry(r.role_name).or_default().push(r.permission);
    }
    Ok(out)
}

/// Roles and effective permissions of each of `users`.
async fn access_of(
    conn: &impl ConnectionTrait,
    users: &[Uuid],
) -> Result<HashMap<Uuid, Access>, UserStoreError> {
    let roles = roles_of(conn, users).await?;
    let names: BTreeSet<String> = roles.values().flatten().cloned().collect();
    let perms = permissions_of(conn, names).await?;
    Ok(roles
        .into_iter()
        .map(|(uid, roles)| {
            let p = roles
                .iter()
                .flat_map(|r| perms.get(r).cloned().unwrap_or_default())
                .collect();
            (uid, Access::new(roles, p))
        })
        .collect())
}

async fn admin_views(
    conn: &impl ConnectionTrait,
    models: Vec<user::Model>,
) -> Result<Vec<AdminUser>, UserStoreError> {
    let ids: Vec<Uuid> = models.iter().map(|m| m.id).collect();
    let mut access = access_of(conn, &ids).await?;
    Ok(models
        .into_iter()
        .map(|m| {
            let a = access.remove(&m.id).unwrap_or_default();
            AdminUser {
                id: m.id,
                email: m.email,
                name: m.name,
                roles: a.roles,
                permissions: a.permissions,
                disabled: m.disabled_at.is_some(),
                created_at: m.created_at,
            }
        })
        .collect())
}

async fn admin_view(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
) -> Result<AdminUser, UserStoreError> {
    let found = user::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .ok_or(UserStoreError::NotFound)?;
    admin_views(conn, vec![found])
        .await?
        .pop()
        .ok_or(UserStoreError::NotFound)
}

/// Serializes changes that can remove an admin (PostgreSQL row lock; SQLite has one writer).
async fn lock_admins(conn: &impl ConnectionTrait) -> Result<(), UserStoreError> {
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        conn.execute_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT name FROM roles WHERE name = 'admin' FOR UPDATE",
        ))
        .await?;
    }
    Ok(())
}

/// Refuses a change after which no enabled account holds `admin`, where `target` is the
/// account about to lose it (demoted, disabled or deleted).
async fn ensure_another_admin(
    conn: &impl ConnectionTrait,
    target: &user::Model,
    what: &str,
) -> Result<(), UserStoreError> {
    let target_is_admin = target.disabled_at.is_none()
        && user_role::Entity::find_by_id((target.id, ADMIN_ROLE.to_string()))
            .one(conn)
            .await?
            .is_some();
    if !target_is_admin {
        return Ok(());
    }
    let others = user_role::Entity::find()
        .inner_join(user::Entity)
        .filter(user_role::Column::RoleName.eq(ADMIN_ROLE))
        .filter(user::Column::DisabledAt.is_null())
        .filter(user_role::Column::UserId.ne(target.id))
        .count(conn)
        .await?;
    if others == 0 {
        return Err(UserStoreError::Conflict(format!(
            "{what} would leave no enabled admin; grant the admin role to another account first"
        )));
    }
    Ok(())
}

async fn find_model(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
) -> Result<user::Model, UserStoreError> {
    user::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .ok_or(UserStoreError::NotFound)
}

fn escape_like(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Roles, permissions and whether the account is disabled: what a session is made of.
#[derive(Debug, Clone)]
pub struct AccountAccess {
    pub access: Access,
    pub disabled: bool,
}

/// `None`: no such account.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<AccountAccess>, UserStoreError>>")]
pub struct FindAccess(pub Uuid);

impl Handler<FindAccess> for UserStore {
    type Result = Reply<Result<Option<AccountAccess>, UserStoreError>>;

    fn handle(&mut self, msg: FindAccess, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("find_access", async {
                let Some(found) = user::Entity::find_by_id(msg.0).one(&db.conn).await? else {
                    return Ok(None);
                };
                let access = access_of(&db.conn, &[found.id])
                    .await?
                    .remove(&found.id)
                    .unwrap_or_default();
                Ok(Some(AccountAccess {
                    access,
                    disabled: found.disabled_at.is_some(),
                }))
            })
            .await
        })
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Result<(Vec<AdminUser>, u64), UserStoreError>>")]
pub struct ListUsers {
    /// Normalized (lower-case); matched literally.
    pub email_prefix: Option<String>,
    pub page: PageRequest,
}

impl Handler<ListUsers> for UserStore {
    type Result = Reply<Result<(Vec<AdminUser>, u64), UserStoreError>>;

    fn handle(&mut self, msg: ListUsers, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("list_users", async {
                let mut query = user::Entity::find();
                if let Some(prefix) = msg.email_prefix.filter(|p| !p.is_empty()) {
                    query = query.filter(
                        user::Column::Email.like(LikeExpr::new(escape_like(&prefix)).escape('\\')),
                    );
                }
                let total = query.clone().count(&db.conn).await?;
                let models = query
                    .order_by_asc(user::Column::Email)
                    .offset((msg.page.page - 1) * msg.page.per_page)
                    .limit(msg.page.per_page)
                    .all(&db.conn)
                    .await?;
                Ok((admin_views(&db.conn, models).await?, total))
            })
            .await
        })
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Result<AdminUser, UserStoreError>>")]
pub struct GetUser(pub Uuid);

impl Handler<GetUser> for UserStore {
    type Result = Reply<Result<AdminUser, UserStoreError>>;

    fn handle(&mut self, msg: GetUser, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move { db.call_tx("get_user", admin_view(&db.conn, msg.0)).await })
    }
}

/// Replaces the account's roles (`user` is always kept).
///
/// With `by` (the caller's current access) the escalation rule is applied in the transaction
/// that makes the change, to the roles it really replaces: the caller must hold everything the
/// account holds now and every permission of each role granted or removed
/// ([`Access::shortfall`]). The account's row is locked first (PostgreSQL), so a concurrent
/// grant cannot slip in between the check and the write.
#[derive(Message)]
#[rtype(result = "Reply<Result<RoleChange, UserStoreError>>")]
pub struct SetRoles {
    pub user_id: Uuid,
    pub roles: Vec<String>,
    pub by: Option<Access>,
}

/// What [`SetRoles`] did.
#[derive(Debug)]
pub enum RoleChange {
    /// The account after the change, and its roles before it.
    Done {
        user: AdminUser,
        previous: Vec<String>,
    },
    /// Refused by the escalation rule; nothing changed.
    Refused {
        shortfall: Shortfall,
        previous: Vec<String>,
    },
}

/// Serializes changes to one account's roles (PostgreSQL row lock; SQLite has one writer).
async fn lock_account(conn: &impl ConnectionTrait, user_id: Uuid) -> Result<(), UserStoreError> {
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        conn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT id FROM users WHERE id = $1 FOR UPDATE",
            [user_id.into()],
        ))
        .await?;
    }
    Ok(())
}

/// What `by` lacks to change `target`'s roles from `previous` to `roles` (see [`SetRoles`]).
async fn role_change_shortfall(
    conn: &impl ConnectionTrait,
    by: &Access,
    target: Uuid,
    previous: &[String],
    roles: &[String],
) -> Result<Shortfall, UserStoreError> {
    let held = access_of(conn, &[target])
        .await?
        .remove(&target)
        .unwrap_or_default();
    let changed: BTreeSet<String> = previous
        .iter()
        .filter(|r| !roles.contains(r))
        .chain(roles.iter().filter(|r| !previous.contains(r)))
        .cloned()
        .collect();
    let root = held.is_root() || changed.contains(ADMIN_ROLE);
    let of_changed = permissions_of(conn, changed).await?;
    Ok(by.shortfall(
        held.permissions
            .iter()
            .chain(of_changed.values().flatten())
            .map(String::as_str),
        root,
    ))
}

impl Handler<SetRoles> for UserStore {
    type Result = Reply<Result<RoleChange, UserStoreError>>;

    fn handle(&mut self, msg: SetRoles, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let roles = normalize_roles(msg.roles);
            db.call_tx("set_roles", async {
                let txn = db.conn.begin().await?;
                let target = find_model(&txn, msg.user_id).await?;
                lock_account(&txn, target.id).await?;
                let previous = roles_of(&txn, &[target.id])
                    .await?
                    .remove(&target.id)
                    .unwrap_or_default();
                if let Some(by) = &msg.by {
                    let shortfall =
                        role_change_shortfall(&txn, by, target.id, &previous, &roles).await?;
                    if !shortfall.is_empty() {
                        return Ok(RoleChange::Refused {
                            shortfall,
                            previous,
                        });
                    }
                }
                check_grant(&txn, &roles).await?;
                if previous.iter().any(|r| r == ADMIN_ROLE)
                    && !roles.iter().any(|r| r == ADMIN_ROLE)
                {
                    lock_admins(&txn).await?;
                    ensure_another_admin(&txn, &target, "removing the admin role").await?;
                }
                user_role::Entity::delete_many()
                    .filter(user_role::Column::UserId.eq(target.id))
                    .filter(user_role::Column::RoleName.is_not_in(roles.iter().cloned()))
                    .exec(&txn)
                    .await?;
                insert_roles(&txn, target.id, &roles).await?;
                let user = admin_view(&txn, target.id).await?;
                txn.commit().await?;
                Ok(RoleChange::Done { user, previous })
            })
            .await
        })
    }
}

/// Disables or enables an account. Returns whether anything changed.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct SetDisabled {
    pub user_id: Uuid,
    pub disabled: bool,
}

impl Handler<SetDisabled> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: SetDisabled, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("set_disabled", async {
                let txn = db.conn.begin().await?;
                let target = find_model(&txn, msg.user_id).await?;
                if target.disabled_at.is_some() == msg.disabled {
                    return Ok(false);
                }
                if msg.disabled {
                    lock_admins(&txn).await?;
                    ensure_another_admin(&txn, &target, "disabling this account").await?;
                }
                let now = Utc::now();
                user::ActiveModel {
                    id: Set(target.id),
                    disabled_at: Set(msg.disabled.then_some(now)),
                    updated_at: Set(now),
                    ..Default::default()
                }
                .update(&txn)
                .await?;
                txn.commit().await?;
                Ok(true)
            })
            .await
        })
    }
}

/// Whether the account exists and could be disabled or deleted now without leaving no enabled
/// admin: a read, asked before the account's sessions are cut off, so a refused change does
/// not end them. The change itself checks again under the lock.
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct CheckRemovable {
    pub user_id: Uuid,
    /// "disabling this account", "deleting this account": for the conflict message.
    pub what: &'static str,
}

impl Handler<CheckRemovable> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: CheckRemovable, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("check_removable", async {
                let target = find_model(&db.conn, msg.user_id).await?;
                ensure_another_admin(&db.conn, &target, msg.what).await
            })
            .await
        })
    }
}

/// Removes the account and its roles; the audit trail keeps its events.
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct DeleteUser(pub Uuid);

impl Handler<DeleteUser> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: DeleteUser, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("delete_user", async {
                let txn = db.conn.begin().await?;
                let target = find_model(&txn, msg.0).await?;
                lock_admins(&txn).await?;
                ensure_another_admin(&txn, &target, "deleting this account").await?;
                user_role::Entity::delete_many()
                    .filter(user_role::Column::UserId.eq(target.id))
                    .exec(&txn)
                    .await?;
                user::Entity::delete_by_id(target.id).exec(&txn).await?;
                txn.commit().await?;
                Ok(())
            })
            .await
        })
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Result<Vec<RoleView>, UserStoreError>>")]
pub struct ListRoles;

impl Handler<ListRoles> for UserStore {
    type Result = Reply<Result<Vec<RoleView>, UserStoreError>>;

    fn handle(&mut self, _: ListRoles, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("list_roles", async {
                let roles = role::Entity::find()
                    .order_by_asc(role::Column::Name)
                    .all(&db.conn)
                    .await?;
                let mut perms =
                    permissions_of(&db.conn, roles.iter().map(|r| r.name.clone())).await?;
                Ok(roles
                    .into_iter()
                    .map(|r| RoleView {
                        permissions: perms.remove(&r.name).unwrap_or_default(),
                        name: r.name,
                        builtin: r.builtin,
                    })
                    .collect())
            })
            .await
        })
    }
}

/// A new role; its name must be free. Name and permissions are validated by the caller.
#[derive(Message)]
#[rtype(result = "Reply<Result<RoleView, UserStoreError>>")]
pub struct CreateRole {
    pub name: String,
    pub permissions: Vec<String>,
}

impl Handler<CreateRole> for UserStore {
    type Result = Reply<Result<RoleView, UserStoreError>>;

    fn handle(&mut self, msg: CreateRole, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let permissions: Vec<String> = msg
                .permissions
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let name = msg.name;
            let exists = || UserStoreError::Conflict(format!("a role named {name} already exists"));
            db.call_tx("create_role", async {
                let txn = db.conn.begin().await?;
                if role::Entity::find_by_id(name.clone())
                    .one(&txn)
                    .await?
                    .is_some()
                {
                    return Err(exists());
                }
                let inserted = role::ActiveModel {
                    name: Set(name.clone()),
                    builtin: Set(false),
                    created_at: Set(Utc::now()),
                }
                .insert(&txn)
                .await;
                match inserted {
                    Ok(_) => {}
                    // A concurrent creation of the same name.
                    Err(e)
                        if matches!(
                            e.sql_err(),
                            Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                        ) =>
                    {
                        return Err(exists())
                    }
                    Err(e) => return Err(e.into()),
                }
                if !permissions.is_empty() {
                    role_permission::Entity::insert_many(permissions.iter().map(|p| {
                        role_permission::ActiveModel {
                            role_name: Set(name.clone()),
                            permission: Set(p.clone()),
                        }
                    }))
                    .exec_without_returning(&txn)
                    .await?;
                }
                txn.commit().await?;
                Ok(RoleView {
                    name: name.clone(),
                    permissions: permissions.clone(),
                    builtin: false,
                })
            })
            .await
        })
    }
}

/// Gives `role` to the account with this (normalized) email, if it exists (ADMIN_EMAILS at
/// start-up, the CLI). Returns the account id and its roles before, when something changed.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<(Uuid, Vec<String>)>, UserStoreError>>")]
pub struct GrantRole {
    pub email: String,
    pub role: String,
}

impl Handler<GrantRole> for UserStore {
    type Result = Reply<Result<Option<(Uuid, Vec<String>)>, UserStoreError>>;

    fn handle(&mut self, msg: GrantRole, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("grant_role", async {
                let txn = db.conn.begin().await?;
                let Some(found) = user::Entity::find()
                    .filter(user::Column::Email.eq(msg.email))
                    .one(&txn)
                    .await?
                else {
                    return Ok(None);
                };
                let previous = roles_of(&txn, &[found.id])
                    .await?
                    .remove(&found.id)
                    .unwrap_or_default();
                if previous.contains(&msg.role) {
                    return Ok(None);
                }
                let mut wanted = previous.clone();
                wanted.push(msg.role.clone());
                check_grant(&txn, &normalize_roles(wanted)).await?;
                // Pods starting together race here; only the one whose row landed reports it.
                let added = insert_roles(&txn, found.id, &[msg.role]).await?;
                txn.commit().await?;
                Ok((added > 0).then_some((found.id, previous)))
            })
            .await
        })
    }
}

/// Gives the built-in `admin` role every permission of [`BUILTIN_PERMISSIONS`] it lacks: one
/// added to the definition after the database was migrated. Runs with the migrations
/// (`sessiond migrate`, or at start-up) and at every start-up; idempotent, so pods starting
/// together agree. Returns how many permissions were added. Sessions of admins carry an added
/// permission from their next login on.
pub async fn sync_admin_role(conn: &impl ConnectionTrait) -> Result<u64, UserStoreError> {
    let held: BTreeSet<String> = permissions_of(conn, [ADMIN_ROLE.to_string()])
        .await?
        .remove(ADMIN_ROLE)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let missing: Vec<&str> = BUILTIN_PERMISSIONS
        .iter()
        .copied()
        .filter(|p| !held.contains(*p))
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    role_permission::Entity::insert_many(missing.iter().map(|p| role_permission::ActiveModel {
        role_name: Set(ADMIN_ROLE.to_string()),
        permission: Set(p.to_string()),
    }))
    .on_conflict(
        OnConflict::columns([
            role_permission::Column::RoleName,
            role_permission::Column::Permission,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .map_err(UserStoreError::from)
}

/// Stores audit events; idempotent (a retried batch writes each event once).
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct WriteAudit(pub Vec<AuditEvent>);

impl Handler<WriteAudit> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: WriteAudit, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            if msg.0.is_empty() {
                return Ok(());
            }
            let rows = msg.0.into_iter().map(|e| audit_event::ActiveModel {
                id: Set(e.id),
                occurred_at: Set(e.occurred_at),
                event_type: Set(e.event_type.to_string()),
                actor_id: Set(e.actor_id),
                subject_id: Set(e.subject_id),
                ip: Set(e.ip),
                outcome: Set(e.outcome.to_string()),
                detail: Set(e.detail.to_string()),
            });
            let insert = audit_event::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::column(audit_event::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&db.conn);
            db.call("write_audit", insert).await.map(|_| ())
        })
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Result<(Vec<AuditEventView>, u64), UserStoreError>>")]
pub struct ListAudit {
    /// Events where this account is the actor or the subject.
    pub user_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub page: PageRequest,
}

impl Handler<ListAudit> for UserStore {
    type Result = Reply<Result<(Vec<AuditEventView>, u64), UserStoreError>>;

    fn handle(&mut self, msg: ListAudit, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("list_audit", async {
                let mut query = audit_event::Entity::find();
                if let Some(uid) = msg.user_id {
                    query = query.filter(
                        Condition::any()
                            .add(audit_event::Column::ActorId.eq(uid))
                            .add(audit_event::Column::SubjectId.eq(uid)),
                    );
                }
                if let Some(t) = msg.event_type {
                    query = query.filter(audit_event::Column::EventType.eq(t));
                }
                let total = query.clone().count(&db.conn).await?;
                let rows = query
                    .order_by_desc(audit_event::Column::OccurredAt)
                    .order_by_desc(audit_event::Column::Id)
                    .offset((msg.page.page - 1) * msg.page.per_page)
                    .limit(msg.page.per_page)
                    .all(&db.conn)
                    .await?;
                let items = rows
                    .into_iter()
                    .map(|r| AuditEventView {
                        id: r.id,
                        event_type: r.event_type,
                        occurred_at: r.occurred_at,
                        actor_id: r.actor_id,
                        subject_id: r.subject_id,
                        ip: r.ip,
                        outcome: r.outcome,
                        detail: serde_json::from_str(&r.detail).unwrap_or(serde_json::Value::Null),
                    })
                    .collect();
                Ok((items, total))
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(escape_like("a_b%c\\"), "a\\_b\\%c\\\\%");
    }

    #[test]
    fn every_account_keeps_the_user_role() {
        assert_eq!(
            normalize_roles(vec!["admin".into(), "admin".into()]),
            ["admin", "user"]
        );
        assert_eq!(normalize_roles(vec![]), ["user"]);
    }
}
