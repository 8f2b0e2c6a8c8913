//! The admin API's service clients: the callers of POST /introspect. Handlers take
//! [`Authorized<ClientsWrite>`], so a caller without `clients:write` gets 403 before any input
//! is read (see [`super::admin`]); the operations are in [`crate::app::clients`].
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{caller, respond::json_body, scoped_resource};
use crate::{
    app::clients as ops,
    auth::{access::ClientsWrite, Authorized},
    domain::ClientName,
    error::ApiError,
    state::AppState,
    users::ClientView,
};

/// Adds the client routes to the `/admin` scope (`scope` is its path, for the metrics labels).
pub fn configure_admin(scope: &'static str) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.service(
            scoped_resource(scope, "/clients", "GET, POST")
                .route(web::get().to(list_clients))
                .route(web::post().to(create_client)),
        )
        .service(
            scoped_resource(scope, "/clients/{client_id}", "DELETE")
                .route(web::delete().to(delete_client)),
        );
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientBody {
    /// What the client is, for the people who manage it: 1 to 100 characters, one line.
    #[schema(example = "billing", min_length = 1, max_length = 100)]
    name: String,
}

/// A client just created, with its secret: the only time the secret is shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedClient {
    client_id: Uuid,
    #[schema(example = "billing")]
    name: String,
    /// Keep it now: only a hash is stored. Use it with `client_id` as HTTP Basic credentials.
    #[schema(example = "q3Vb0m1xX0yQm7n8c7s3xW0Kp2E5sU1dYV9fJt4hL6A")]
    client_secret: String,
}

/// Create a service client: a caller of POST /introspect. The answer holds the client's secret,
/// which is never shown again (only a hash is stored).
#[utoipa::path(post, path = "/admin/clients", tag = "admin", security(("bearer" = [])), request_body = ClientBody,
    responses(
        (status = 201, description = "Created (permission `clients:write`); `client_secret` is shown this once", body = CreatedClient),
    ))]
pub async fn create_client(
    admin: Authorized<ClientsWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let body: ClientBody = json_body(&req, payload).await?;
    let name = ClientName::parse(body.name).map_err(ApiError::InvalidRequest)?;
    let created = ops::create_client(&state.app, &caller(&req, &state, &admin), name).await?;
    Ok(HttpResponse::Created().json(CreatedClient {
        client_id: created.client.client_id,
        name: created.client.name,
        client_secret: created.secret,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClientList {
    items: Vec<ClientView>,
}

/// Every service client, oldest first (never with its secret).
#[utoipa::path(get, path = "/admin/clients", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Every client (permission `clients:write`)", body = ClientList)))]
pub async fn list_clients(
    _: Authorized<ClientsWrite>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let items = ops::list_clients(&state.app).await?;
    Ok(HttpResponse::Ok().json(ClientList { items }))
}

/// Delete a service client: its credentials are refused at once by the pod that answered, and
/// by every other pod within SESSION_CACHE_TTL (5 s by default).
#[utoipa::path(delete, path = "/admin/clients/{client_id}", tag = "admin", security(("bearer" = [])),
    params(("client_id" = Uuid, Path, description = "A client id from POST or GET /admin/clients")),
    responses(
        (status = 204, description = "Deleted (permission `clients:write`)"),
        (status = 400, description = "`client_id` is not a UUID (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 404, description = "No such client (`not_found`)", body = crate::error::ErrorBody),
    ))]
pub async fn delete_client(
    admin: Authorized<ClientsWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    client_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let client_id =
        Uuid::parse_str(&client_id).map_err(|_| ApiError::invalid("client_id must be a UUID"))?;
    ops::delete_client(&state.app, &caller(&req, &state, &admin), client_id).await?;
    Ok(HttpResponse::NoContent().finish())
}
