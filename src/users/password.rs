//! argon2id on a bounded blocking pool: at most `max_concurrency` hashes at once (each holds
//! `memory_kib` of RAM), never on an actix worker or actor thread. Excess callers wait up to
//! `queue_timeout`, then get [`PasswordError::Busy`] (503) instead of piling up.
use std::{sync::Arc, time::Duration};

use argon2::{
    password_hash::{phc::PasswordHash, PasswordHasher as _, PasswordVerifier as _},
    Algorithm, Argon2, Params, Version,
};
use tokio::sync::Semaphore;

use crate::{config::Argon2Config, metrics::Metrics};

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing is saturated")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    argon: Arc<Argon2<'static>>,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Verified against when the email is unknown, so both cases cost one hash.
    dummy_hash: Arc<str>,
    metrics: Metrics,
}

impl PasswordHasher {
    pub async fn new(cfg: &Argon2Config, metrics: Metrics) -> Result<Self, PasswordError> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| PasswordError::Internal(e.to_string()))?;
        let argon = Arc::new(Argon2::new(Algorithm::Argon2id, Version::V0x13, params));
        let mut hasher = Self {
            argon,
            slots: Arc::new(Semaphore::new(cfg.max_concurrency)),
            queue_timeout: cfg.queue_timeout,
            dummy_hash: Arc::from(""),
            metrics,
        };
        hasher.dummy_hash = Arc::from(hasher.hash("sessiond-timing-equaliser".into()).await?);
        Ok(hasher)
    }

    /// Runs `f` on the blocking pool once a slot is free, inside the caller's tracing span.
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> R + Send + 'static,
    ) -> Result<R, PasswordError> {
        let waited = std::time::Instant::now();
        let permit =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.metrics
            .argon2_queue_wait
            .observe(waited.elapsed().as_secs_f64());
        let Ok(Ok(permit)) = permit else {
            self.metrics.argon2_rejected.inc();
            return Err(PasswordError::Busy);
        };
        let argon = self.argon.clone();
        let span = tracing::Span::current();
        let in_flight = self.metrics.argon2_in_flight.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            in_flight.inc();
            let result = span.in_scope(|| f(&argon));
            in_flight.dec();
            result
        })
        .await
        .map_err(|e| PasswordError::Internal(e.to_string()))
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.run(move |argon| {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Internal(e.to_string()))
        })
        .await?
    }

    /// `stored` is `None` for an unknown account: the dummy hash is verified instead and the
    /// answer is always `false`, at the same cost.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let known = stored.is_some();
        let phc: Arc<str> = stored.map_or_else(|| self.dummy_hash.clone(), Arc::from);
        let ok = self
            .run(move |argon| {
                PasswordHash::new(&phc)
                    .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(ok && known)
    }
}
