//! One-time records of sign-in flows: the state of a flow between its start and the callback,
//! and the one-time code between the callback and POST /oauth/token. In Redis when sessiond has
//! it, so any pod can finish a flow another started; in-process when embedded. Each is taken
//! once (GETDEL): a replay finds nothing. Keys are hashes of the values the client holds, so
//! Redis never stores a usable state or code.
use std::time::Duration;

use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::{
    error::{ApiError, PublicError},
    redis::{Redis, RedisUnavailable},
    session::now_unix,
};

/// What a record is for; part of its key.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    State,
    Code,
    /// A redeemed code, for its reuse to revoke the session it opened.
    SpentCode,
    /// A WebAuthn ceremony's state between its start and its finish (`app::webauthn`).
    WebauthnRegistration,
    WebauthnSignIn,
    WebauthnMfa,
    /// A step-up (POST /reauthenticate) challenge, under the session that asked for it.
    WebauthnReauth,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::State => "oauth-state",
            Kind::Code => "oauth-code",
            Kind::SpentCode => "oauth-code-spent",
            Kind::WebauthnRegistration => "webauthn-reg",
            Kind::WebauthnSignIn => "webauthn-signin",
            Kind::WebauthnMfa => "webauthn-mfa",
            Kind::WebauthnReauth => "webauthn-reauth",
        }
    }
}

/// The longest any record lives (a flow's state: 10 minutes).
const MAX_TTL: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub enum Pending {
    Redis(Redis),
    /// Value with its expiry (unix seconds).
    Memory(Cache<String, (i64, String)>),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PendingUnavailable(String);

impl From<RedisUnavailable> for PendingUnavailable {
    fn from(e: RedisUnavailable) -> Self {
        Self(e.0)
    }
}

impl PublicError for PendingUnavailable {
    fn into_api_error(self) -> ApiError {
        ApiError::Unavailable {
            what: "session store",
            detail: self.0,
        }
    }
}

fn key_part(kind: Kind, id: &str) -> String {
    let digest = Sha256::digest(format!("sessiond/{}/{id}", kind.name()).as_bytes());
    format!("{}:{}", kind.name(), hex::encode(&digest[..20]))
}

impl Pending {
    pub fn memory() -> Self {
        Pending::Memory(
            Cache::builder()
                .time_to_live(MAX_TTL)
                .max_capacity(1_000_000)
                .build(),
        )
    }

    pub async fn put(
        &self,
        kind: Kind,
        id: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), PendingUnavailable> {
        let ttl = ttl.min(MAX_TTL);
        match self {
            Pending::Redis(redis) => {
                let cmd = ::redis::cmd("SET")
                    .arg(format!("{}{}", redis.prefix(), key_part(kind, id)))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .to_owned();
                redis
                    .call("oauth_put", async |c| cmd.query_async::<()>(c).await)
                    .await?;
            }
            Pending::Memory(cache) => {
                let expires = now_unix() + ttl.as_secs() as i64;
                cache
                    .insert(key_part(kind, id), (expires, value.to_string()))
                    .await;
            }
        }
        Ok(())
    }

    /// The record, removed: only one caller ever gets it.
    pub async fn take(&self, kind: Kind, id: &str) -> Result<Option<String>, PendingUnavailable> {
        match self {
            Pending::Redis(redis) => {
                let cmd = ::redis::cmd("GETDEL")
                    .arg(format!("{}{}", redis.prefix(), key_part(kind, id)))
                    .to_owned();
                Ok(redis
                    .call("oauth_take", async |c| {
                        cmd.query_async::<Option<String>>(c).await
                    })
                    .await?)
            }
            Pending::Memory(cache) => Ok(cache
                .remove(&key_part(kind, id))
                .await
                .filter(|(expires, _)| *expires > now_unix())
                .map(|(_, v)| v)),
        }
    }
}
