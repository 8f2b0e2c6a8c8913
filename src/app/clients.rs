//! Service clients: creating, listing and deleting them (admin operations, audited), and checking
//! the credentials a client presents to POST /introspect.
//!
//! A secret is 256 random bits, shown once; only a SHA-256 of it is stored, and a presented
//! secret is hashed and compared in constant time. A slow password hash (argon2) is for secrets
//! people choose, which can be guessed; nobody guesses 256 random bits, so it would protect
//! nothing, while costing tens of milliseconds of CPU on every introspection: a pod would answer
//! a few dozen per second instead of tens of thousands.
//!
//! What the check reads is cached per pod for SESSION_CACHE_TTL (unknown ids too, so a flood of
//! one bad id is not a flood of database reads): a deleted client is refused at once by the pod
//! that deleted it, and by every other pod within SESSION_CACHE_TTL (default 5 s), the bound a
//! revoked session has when its invalidation message is lost.
use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{App, Caller, Client};
use crate::actor::Ask;
use crate::{
    audit::AuditEvent,
    domain::{AuditKind, ClientName},
    error::ApiError,
    throttle::Scope,
    users::{ClientView, CreateClient, DeleteClient, FindClientSecret, ListClients},
};

/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;
/// Longer presented secrets are refused before hashing (ours are 43 characters).
const MAX_SECRET_LEN: usize = 256;
/// Client ids (known and unknown) a pod remembers.
const CACHED_CLIENTS: u64 = 10_000;

/// The stored hash of each client id a pod has looked up recently; `None`: no such client.
pub type ClientSecrets = moka::future::Cache<Uuid, Option<[u8; 32]>>;

/// The cache behind [`authenticate`], entries kept for `ttl` (SESSION_CACHE_TTL; 0: none).
pub fn client_secrets(ttl: Duration) -> ClientSecrets {
    moka::future::Cache::builder()
        .time_to_live(ttl.max(Duration::from_millis(1)))
        .max_capacity(if ttl.is_zero() { 0 } else { CACHED_CLIENTS })
        .build()
}

/// A client just created, with the only copy of its secret that will ever exist.
pub struct NewClient {
    pub client: ClientView,
    pub secret: String,
}

/// SHA-256 of the secret, domain-separated so the hash is of no use anywhere else.
fn hash_secret(secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sessiond/client-secret/v1\0");
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// Creates a client with a fresh secret (base64url of 256 random bits).
pub async fn create_client(
    app: &App,
    admin: &Caller,
    name: ClientName,
) -> Result<NewClient, ApiError> {
    let mut raw = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut raw);
    let secret = URL_SAFE_NO_PAD.encode(raw);
    let client = app
        .users
        .ask(CreateClient {
            client_id: Uuid::new_v4(),
            name: name.into_inner(),
            secret_hash: hex::encode(hash_secret(&secret)),
            created_by: Some(admin.user_id),
        })
        .await?;
    app.audit.record(
        AuditEvent::success(AuditKind::ClientCreate)
            .actor(admin.user_id)
            .ip(admin.ip.clone())
            .detail(serde_json::json!({"client_id": client.client_id, "name": client.name})),
    );
    Ok(NewClient { client, secret })
}

/// Every client, oldest first.
pub async fn list_clients(app: &App) -> Result<Vec<ClientView>, ApiError> {
    Ok(app.users.ask(ListClients).await?)
}

/// Deletes a client: refused at once on this pod, within SESSION_CACHE_TTL on the others.
pub async fn delete_client(app: &App, admin: &Caller, client_id: Uuid) -> Result<(), ApiError> {
    let deleted = app.users.ask(DeleteClient(client_id)).await;
    // Also after an error: the row may be gone although the answer was lost.
    app.client_secrets.invalidate(&client_id).await;
    let Some(client) = deleted? else {
        return Err(ApiError::NotFound("client"));
    };
    app.audit.record(
        AuditEvent::success(AuditKind::ClientDelete)
            .actor(admin.user_id)
            .ip(admin.ip.clone())
            .detail(serde_json::json!({"client_id": client.client_id, "name": client.name})),
    );
    Ok(())
}

/// Authenticates a service client calling from `from`: `credentials` as read from the request
/// (`None`: missing or malformed). Failures are counted per client address; once the window's
/// limit (RATE_LIMIT_INTROSPECT_FAILURES_PER_IP) is passed, every further attempt from that
/// address is 429 until the window ends, refused before any check, a correct secret included
/// (see [`crate::throttle::Throttle::count_failure`]).
pub async fn authenticate_from(
    app: &App,
    from: &Client,
    credentials: Option<(Uuid, String)>,
) -> Result<(), ApiError> {
    let group = from.group();
    app.throttle.blocked(Scope::IntrospectFailureIp, &group)?;
    let result = match credentials {
        Some((client_id, secret)) => authenticate(app, client_id, &secret).await,
        None => Err(ApiError::InvalidClient),
    };
    if let Err(ApiError::InvalidClient) = result {
        app.throttle
            .count_failure(Scope::IntrospectFailureIp, &group)
            .await?;
    }
    result
}

/// Checks a client's credentials: `Err(InvalidClient)` for an unknown id or a wrong secret (one
/// answer for both), 503 when the database cannot tell.
pub async fn authenticate(app: &App, client_id: Uuid, secret: &str) -> Result<(), ApiError> {
    if secret.len() > MAX_SECRET_LEN {
        return Err(ApiError::InvalidClient);
    }
    let users = app.users.clone();
    let stored = app
        .client_secrets
        .try_get_with(client_id, async move {
            let Some(hex_hash) = users.ask(FindClientSecret(client_id)).await? else {
                return Ok(None);
            };
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&hex_hash, &mut hash)
                .map_err(|_| ApiError::Internal(format!("client {client_id}: bad secret hash")))?;
            Ok::<_, ApiError>(Some(hash))
        })
        .await
        .map_err(|e| e.clone_public())?;
    match stored {
        Some(hash) if bool::from(hash.ct_eq(&hash_secret(secret))) => Ok(()),
        _ => Err(ApiError::InvalidClient),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_on_every_byte_and_is_domain_separated() {
        let a = hash_secret("abc");
        assert_ne!(a, hash_secret("abd"));
        let plain: [u8; 32] = Sha256::digest(b"abc").into();
        assert_ne!(a, plain);
    }
}
