//! One-time records of sign-in flows: the state of a flow between its start and the callback,
//! and the one-time code between the callback and POST /oauth/token. In Redis when sessiond has
//! it, so any pod can finish a flow another started; in-process when embedded. Each is taken
//! once (GETDEL): a replay finds nothing.
//!
//! Sealed as session records are (`session::seal`): the key is an HMAC of the kind and the value
//! the client holds, so Redis never stores a usable state or code and whoever writes Redis cannot
//! plant a record under the key of a value of his choice; the value is `<mac>.<payload>`, the MAC
//! over the kind, that value and the payload, so a record edited or moved to another key is
//! refused like an unknown one (and, taken, is gone), logged and counted.
use std::time::Duration;

use moka::future::Cache;
use prometheus::IntCounterVec;

use crate::{
    error::{ApiError, PublicError},
    redis::{Redis, RedisUnavailable},
    session::{now_unix, seal::SealKeys},
};

/// What a record is for; part of its key.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    State,
    Code,
    /// A redeemed code, for its reuse to revoke the session it opened.
    SpentCode,
    /// A linking flow's identity waiting for the starting session's confirmation.
    LinkCode,
    /// A WebAuthn ceremony's state between its start and its finish (`app::webauthn`).
    WebauthnRegistration,
    WebauthnSignIn,
    WebauthnMfa,
    /// A step-up (POST /reauthenticate) challenge, under the session that asked for it.
    WebauthnReauth,
}

impl Kind {
    /// In the key (before its hash), the MAC and the `kind` label of the seal-failure metric.
    pub fn name(self) -> &'static str {
        match self {
            Kind::State => "oauth-state",
            Kind::Code => "oauth-code",
            Kind::SpentCode => "oauth-code-spent",
            Kind::LinkCode => "oauth-link",
            Kind::WebauthnRegistration => "webauthn-reg",
            Kind::WebauthnSignIn => "webauthn-signin",
            Kind::WebauthnMfa => "webauthn-mfa",
            Kind::WebauthnReauth => "webauthn-reauth",
        }
    }
}

/// The longest any record lives (a flow's state: 10 minutes).
const MAX_TTL: Duration = Duration::from_secs(600);

/// The seal of one-time records: the keys, and what a record that fails them costs (a warning
/// without any secret, and `sessiond_record_seal_failures_total{kind}`).
#[derive(Clone, Debug)]
pub struct RecordSeal {
    keys: SealKeys,
    failures: IntCounterVec,
}

impl RecordSeal {
    pub fn new(keys: SealKeys, failures: IntCounterVec) -> Self {
        Self { keys, failures }
    }

    pub fn keys(&self) -> &SealKeys {
        &self.keys
    }

    /// A record of `kind` that failed its MAC: refused like an unknown one by the caller.
    pub fn refused(&self, kind: &str) {
        self.failures.with_label_values(&[kind]).inc();
        tracing::warn!(
            kind,
            "a one-time record in the session store failed its seal; refused and deleted"
        );
    }

    /// `<mac>.<payload>`.
    fn wrap(&self, kind: Kind, id: &str, payload: &str) -> String {
        let mac = self
            .keys
            .seal_record(kind.name(), id, &[payload.as_bytes()]);
        format!("{mac}.{payload}")
    }

    /// The payload of a stored value, if its MAC verifies.
    fn open(&self, kind: Kind, id: &str, stored: &str) -> Option<String> {
        let opened = stored.split_once('.').and_then(|(mac, payload)| {
            self.keys
                .verify_record(kind.name(), id, &[payload.as_bytes()], mac)
                .then(|| payload.to_string())
        });
        if opened.is_none() {
            self.refused(kind.name());
        }
        opened
    }
}

#[derive(Clone)]
pub struct Pending {
    store: Store,
    seal: RecordSeal,
}

#[derive(Clone)]
enum Store {
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

impl Pending {
    pub fn redis(redis: Redis, seal: RecordSeal) -> Self {
        Self {
            store: Store::Redis(redis),
            seal,
        }
    }

    /// The in-process store cannot be written from outside; it is sealed all the same, so both
    /// stores run one code path.
    pub fn memory(seal: RecordSeal) -> Self {
        Self {
            store: Store::Memory(
                Cache::builder()
                    .time_to_live(MAX_TTL)
                    .max_capacity(1_000_000)
                    .build(),
            ),
            seal,
        }
    }

    /// The record's keys: under the current secret, and under the previous one.
    fn keys(&self, kind: Kind, id: &str) -> (String, Option<String>) {
        let prefix = match &self.store {
            Store::Redis(redis) => redis.prefix(),
            Store::Memory(_) => "",
        };
        let (current, previous) = self.seal.keys.record_ids(kind.name(), id);
        let key = |hash: String| format!("{prefix}{}:{hash}", kind.name());
        (key(current), previous.map(key))
    }

    pub async fn put(
        &self,
        kind: Kind,
        id: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), PendingUnavailable> {
        let ttl = ttl.min(MAX_TTL);
        let (key, _) = self.keys(kind, id);
        let value = self.seal.wrap(kind, id, value);
        match &self.store {
            Store::Redis(redis) => {
                let cmd = ::redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .to_owned();
                redis
                    .call("oauth_put", async |c| cmd.query_async::<()>(c).await)
                    .await?;
            }
            Store::Memory(cache) => {
                let expires = now_unix() + ttl.as_secs() as i64;
                cache.insert(key, (expires, value)).await;
            }
        }
        Ok(())
    }

    /// The record, removed: only one caller ever gets it. One that fails its seal is refused
    /// (`None`, as an unknown one) and gone all the same.
    pub async fn take(&self, kind: Kind, id: &str) -> Result<Option<String>, PendingUnavailable> {
        let (current, previous) = self.keys(kind, id);
        let mut stored = self.take_key(current).await?;
        if let (None, Some(previous)) = (&stored, previous) {
            stored = self.take_key(previous).await?;
        }
        Ok(stored.and_then(|v| self.seal.open(kind, id, &v)))
    }

    async fn take_key(&self, key: String) -> Result<Option<String>, PendingUnavailable> {
        match &self.store {
            Store::Redis(redis) => {
                let cmd = ::redis::cmd("GETDEL").arg(key).to_owned();
                Ok(redis
                    .call("oauth_take", async |c| {
                        cmd.query_async::<Option<String>>(c).await
                    })
                    .await?)
            }
            Store::Memory(cache) => Ok(cache
                .remove(&key)
                .await
                .filter(|(expires, _)| *expires > now_unix())
                .map(|(_, v)| v)),
        }
    }
}
