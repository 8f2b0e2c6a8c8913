//! The process's one Redis connection, shared by its two users: the session store and the rate
//! limiter. Here: connecting, the key prefix (one per deployment), the bound on every call and
//! its metrics, and script loading. What a failure means is the caller's to say: each user maps
//! [`RedisUnavailable`] into its own error, so a limiter outage is never reported as the session
//! store's.
//!
//! (Inside this crate the extern crate is spelled `::redis`, since this module is `redis` too.)
use std::{future::Future, sync::Arc, time::Duration};

use ::redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Client, RedisError, RedisResult, Script,
};

use crate::metrics::CallMetrics;

/// Redis did not answer in time, refused, dropped the connection or is failing over: every
/// failure means "retry later"; nothing was half-done (each write is one script or MULTI).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RedisUnavailable(pub String);

impl From<RedisError> for RedisUnavailable {
    fn from(e: RedisError) -> Self {
        RedisUnavailable(e.to_string())
    }
}

/// A cloneable handle: the multiplexed connection, the deployment's key prefix and the call
/// bound.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    metrics: CallMetrics,
}

impl Redis {
    /// Connects within a few timeouts; later drops are reconnected by the connection manager.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        metrics: CallMetrics,
    ) -> Result<Self, RedisUnavailable> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout * 4))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            timeout * 8,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| RedisUnavailable("timed out connecting to Redis".into()))??;
        Ok(Self {
            client,
            conn,
            prefix: Arc::from(prefix),
            timeout,
            metrics,
        })
    }

    /// For a dedicated connection (pub/sub cannot share the multiplexed one).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A clone of the shared multiplexed connection.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Every key and channel of this deployment starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One Redis call: bounded by the timeout (a slow Redis gives 503, not a pile-up), timed and
    /// counted by `op`.
    pub async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisUnavailable> {
        let call = async {
            match tokio::time::timeout(self.timeout, fut).await {
                Ok(r) => r.map_err(RedisUnavailable::from),
                Err(_) => Err(RedisUnavailable("Redis call timed out".into())),
            }
        };
        self.metrics.observe(op, call).await
    }

    /// [`bounded`](Self::bounded) with a clone of the shared connection.
    pub async fn call<T>(
        &self,
        op: &'static str,
        run: impl AsyncFnOnce(&mut ConnectionManager) -> RedisResult<T>,
    ) -> Result<T, RedisUnavailable> {
        let mut conn = self.conn.clone();
        self.bounded(op, run(&mut conn)).await
    }
}

/// A Lua script from its parts (a shared prelude, then the body). Sent by hash (EVALSHA) and
/// loaded on a NOSCRIPT reply, so a Redis restart or failover needs nothing from us.
pub fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}
