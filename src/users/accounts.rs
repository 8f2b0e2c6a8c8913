//! Account administration: the UserStore messages behind the admin API's account operations
//! (list, read, roles, disable, enable, delete). Changes that could leave no enabled admin run in
//! a transaction that first locks the `admin` role row (PostgreSQL; SQLite serializes writers
//! anyway), so two admins demoting each other at once cannot both succeed.
use std::collections::BTreeSet;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use entities::{identity, user, user_role};
use sea_orm::{
    sea_query::LikeExpr, ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement,
    TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

use super::{
    roles::{access_of, check_grant, insert_roles, normalize_roles, permissions_of, roles_of},
    UserStore, UserStoreError,
};
use crate::{
    actor::Reply,
    domain::{Access, PageRequest, Shortfall, ADMIN_ROLE},
    webhooks::{Event, Webhooks},
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
    /// `user.roles_changed` is written in the change's transaction when the roles changed.
    pub webhooks: Webhooks,
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
                if user.roles != previous {
                    let event = Event::roles_changed(target.id, &user.roles, &previous);
                    msg.webhooks.write(&txn, &[event]).await?;
                }
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
    /// `user.disabled` is written in the change's transaction when it disabled the account.
    pub webhooks: Webhooks,
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
                if msg.disabled {
                    msg.webhooks
                        .write(&txn, &[Event::disabled(target.id)])
                        .await?;
                }
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

/// Removes the account and its roles; the audit trail keeps its events. `user.deleted` is
/// written in the same transaction.
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct DeleteUser {
    pub user_id: Uuid,
    pub webhooks: Webhooks,
}

impl Handler<DeleteUser> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: DeleteUser, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("delete_user", async {
                let txn = db.conn.begin().await?;
                let target = find_model(&txn, msg.user_id).await?;
                lock_admins(&txn).await?;
                ensure_another_admin(&txn, &target, "deleting this account").await?;
                user_role::Entity::delete_many()
                    .filter(user_role::Column::UserId.eq(target.id))
                    .exec(&txn)
                    .await?;
                // Explicitly, as the roles: the identities' foreign key is not enforced on
                // every SQLite connection, and a deleted account's identity may sign up again.
                identity::Entity::delete_many()
                    .filter(identity::Column::UserId.eq(target.id))
                    .exec(&txn)
                    .await?;
                user::Entity::delete_by_id(target.id).exec(&txn).await?;
                msg.webhooks
                    .write(&txn, &[Event::deleted(target.id)])
                    .await?;
                txn.commit().await?;
                Ok(())
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
}
