//! Service clients in the database: the callers of POST /introspect. The store keeps only the
//! hash of a secret; generating, hashing and checking secrets is `crate::app::clients`' job.
use actix::prelude::*;
use chrono::{DateTime, Utc};
use entities::service_client;
use sea_orm::{ActiveModelTrait, EntityTrait, QueryOrder, Set};
use serde::Serialize;
use uuid::Uuid;

use super::{UserStore, UserStoreError};
use crate::actor::Reply;

/// A client as the admin API lists it (never with its secret or hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientView {
    pub client_id: Uuid,
    #[schema(example = "billing")]
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<&service_client::Model> for ClientView {
    fn from(m: &service_client::Model) -> Self {
        ClientView {
            client_id: m.client_id,
            name: m.name.clone(),
            created_at: m.created_at,
        }
    }
}

/// A new client; the caller chose its id and hashed its secret.
#[derive(Message)]
#[rtype(result = "Reply<Result<ClientView, UserStoreError>>")]
pub struct CreateClient {
    pub client_id: Uuid,
    pub name: String,
    pub secret_hash: String,
    pub created_by: Option<Uuid>,
}

impl Handler<CreateClient> for UserStore {
    type Result = Reply<Result<ClientView, UserStoreError>>;

    fn handle(&mut self, msg: CreateClient, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let model = service_client::ActiveModel {
                client_id: Set(msg.client_id),
                name: Set(msg.name),
                secret_hash: Set(msg.secret_hash),
                created_at: Set(Utc::now()),
                created_by: Set(msg.created_by),
            };
            let saved = db.call("insert_client", model.insert(&db.conn)).await?;
            Ok(ClientView::from(&saved))
        })
    }
}

/// Every client, oldest first.
#[derive(Message)]
#[rtype(result = "Reply<Result<Vec<ClientView>, UserStoreError>>")]
pub struct ListClients;

impl Handler<ListClients> for UserStore {
    type Result = Reply<Result<Vec<ClientView>, UserStoreError>>;

    fn handle(&mut self, _: ListClients, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let query = service_client::Entity::find()
                .order_by_asc(service_client::Column::CreatedAt)
                .order_by_asc(service_client::Column::ClientId);
            let rows = db.call("list_clients", query.all(&db.conn)).await?;
            Ok(rows.iter().map(ClientView::from).collect())
        })
    }
}

/// Deletes a client; `None` when there was none with this id, else what was deleted.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<ClientView>, UserStoreError>>")]
pub struct DeleteClient(pub Uuid);

impl Handler<DeleteClient> for UserStore {
    type Result = Reply<Result<Option<ClientView>, UserStoreError>>;

    fn handle(&mut self, msg: DeleteClient, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            // Delete ... RETURNING is not on every backend: read, then delete by id. Two racing
            // deletes of one client both read it, and only one deletes a row.
            let delete = async {
                let Some(found) = service_client::Entity::find_by_id(msg.0)
                    .one(&db.conn)
                    .await?
                else {
                    return Ok(None);
                };
                let done = service_client::Entity::delete_by_id(msg.0)
                    .exec(&db.conn)
                    .await?;
                Ok((done.rows_affected > 0).then(|| ClientView::from(&found)))
            };
            db.call_tx("delete_client", delete).await
        })
    }
}

/// The stored secret hash of a client, `None` for an unknown id (POST /introspect on a cache
/// miss).
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<String>, UserStoreError>>")]
pub struct FindClientSecret(pub Uuid);

impl Handler<FindClientSecret> for UserStore {
    type Result = Reply<Result<Option<String>, UserStoreError>>;

    fn handle(&mut self, msg: FindClientSecret, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let found = db
                .call(
                    "find_client",
                    service_client::Entity::find_by_id(msg.0).one(&db.conn),
                )
                .await?;
            Ok(found.map(|m| m.secret_hash))
        })
    }
}
