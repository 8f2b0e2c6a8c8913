//! Roles and what they grant: the role catalogue (list, create, the built-in `admin` role kept
//! up to date), the rules for what one account may hold, and the reads of roles and permissions
//! that the other UserStore messages build on.
use std::collections::{BTreeSet, HashMap};

use actix::prelude::*;
use chrono::Utc;
use entities::{role, role_permission, user, user_role};
use sea_orm::{
    sea_query::OnConflict, ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait,
    QueryFilter, QueryOrder, Set, TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

use super::{UserStore, UserStoreError};
use crate::{
    actor::Reply,
    domain::{Access, ADMIN_ROLE, BUILTIN_PERMISSIONS, USER_ROLE},
    webhooks::{Event, Webhooks},
};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoleView {
    #[schema(example = "support")]
    pub name: String,
    #[schema(example = json!(["users:read"]))]
    pub permissions: Vec<String>,
    /// `user` and `admin` are built in.
    pub builtin: bool,
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
pub(crate) async fn permissions_of(
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
pub(crate) async fn access_of(
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
    /// `user.roles_changed` is written in the grant's transaction when it added the role.
    pub webhooks: Webhooks,
}

impl Handler<GrantRole> for UserStore {
    type Result = Reply<Result<Option<(Uuid, Vec<String>)>, UserStoreError>>;

    fn handle(&mut self, msg: GrantRole, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("grant_role", async {
                let txn = db.conn.begin().await?;
                // Only a proven address: ADMIN_EMAILS names owners, not whoever registered first.
                let Some(found) = user::Entity::find()
                    .filter(user::Column::Email.eq(msg.email))
                    .filter(user::Column::EmailVerified.eq(true))
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
                let wanted = normalize_roles(wanted);
                check_grant(&txn, &wanted).await?;
                // Pods starting together race here; only the one whose row landed reports it.
                let added = insert_roles(&txn, found.id, &[msg.role]).await?;
                if added > 0 {
                    let event = Event::roles_changed(found.id, &wanted, &previous);
                    msg.webhooks.write(&txn, &[event]).await?;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_account_keeps_the_user_role() {
        assert_eq!(
            normalize_roles(vec!["admin".into(), "admin".into()]),
            ["admin", "user"]
        );
        assert_eq!(normalize_roles(vec![]), ["user"]);
    }
}
