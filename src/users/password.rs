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
    /// The new password is too easy to guess (common, or derived from the user's own data).
    #[error("password is too common or too easy to guess: {0}")]
    TooWeak(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    argon: Arc<Argon2<'static>>,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Callers waiting for a slot now, and how many may.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    max_queue: usize,
    min_score: u8,
    /// Verified against when the email is unknown, so both cases cost one hash.
    dummy_hash: Arc<str>,
    metrics: Metrics,
}

impl PasswordHasher {
    pub async fn new(
        cfg: &Argon2Config,
        min_score: u8,
        metrics: Metrics,
    ) -> Result<Self, PasswordError> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| PasswordError::Internal(e.to_string()))?;
        let argon = Arc::new(Argon2::new(Algorithm::Argon2id, Version::V0x13, params));
        let mut hasher = Self {
            argon,
            slots: Arc::new(Semaphore::new(cfg.max_concurrency)),
            queue_timeout: cfg.queue_timeout,
            waiting: Arc::default(),
            max_queue: cfg.max_queue,
            min_score,
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
        use std::sync::atomic::Ordering;
        let waited = std::time::Instant::now();
        // Fail fast when the queue is already long: waiting would only pile requests up.
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let permit = if queued >= self.max_queue && self.slots.available_permits() == 0 {
            None
        } else {
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        self.metrics
            .argon2_queue_wait
            .observe(waited.elapsed().as_secs_f64());
        let Some(permit) = permit else {
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

    /// Hashes a password a user chose: it must also be hard enough to guess (zxcvbn, with the
    /// user's own email and name counted as known words). Both run on the blocking pool.
    pub async fn hash_new(
        &self,
        password: String,
        user_inputs: Vec<String>,
    ) -> Result<String, PasswordError> {
        let min_score = self.min_score;
        self.run(move |argon| {
            let inputs: Vec<&str> = user_inputs.iter().map(String::as_str).collect();
            let strength = zxcvbn::zxcvbn(&password, &inputs);
            if (strength.score() as u8) < min_score {
                let hint = strength
                    .feedback()
                    .and_then(|f| f.suggestions().first().map(|s| s.to_string()))
                    .unwrap_or_else(|| "add more words or characters".into());
                return Err(PasswordError::TooWeak(hint.to_lowercase()));
            }
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Internal(e.to_string()))
        })
        .await?
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn hasher() -> PasswordHasher {
        let cfg = Argon2Config {
            memory_kib: 8192,
            iterations: 1,
            parallelism: 1,
            max_concurrency: 2,
            queue_timeout: Duration::from_secs(5),
            max_queue: 8,
        };
        PasswordHasher::new(&cfg, 2, Metrics::new()).await.unwrap()
    }

    #[actix_web::test]
    async fn common_and_trivial_passwords_are_refused() {
        let h = hasher().await;
        for weak in [
            "password",
            "12345678",
            "qwertyuiop",
            "iloveyou1",
            "Password1",
            &"p".repeat(128),
        ] {
            let r = h.hash_new(weak.to_string(), vec![]).await;
            assert!(
                matches!(r, Err(PasswordError::TooWeak(_))),
                "{weak} accepted"
            );
        }
        // Built from the user's own address.
        let r = h
            .hash_new(
                "ada.lovelace1815".into(),
                vec![
                    "ada.lovelace1815@example.com".into(),
                    "ada.lovelace1815".into(),
                ],
            )
            .await;
        assert!(matches!(r, Err(PasswordError::TooWeak(_))));
        for strong in [
            "correct horse battery",
            "a brand new passphrase",
            "Zq8#rT1!vX",
        ] {
            assert!(
                h.hash_new(strong.to_string(), vec![]).await.is_ok(),
                "{strong} refused"
            );
        }
    }

    #[actix_web::test]
    async fn a_long_shared_prefix_is_not_enough() {
        let h = hasher().await;
        let long: String = (0..100)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        let hash = h.hash(long.clone()).await.unwrap();
        assert!(h.verify(long.clone(), Some(hash.clone())).await.unwrap());
        // bcrypt would have cut both at 72 bytes; argon2 sees every byte.
        let mut other = long[..72].to_string();
        other.push_str(&"z".repeat(28));
        assert!(!h.verify(other, Some(hash.clone())).await.unwrap());
        assert!(!h.verify(long[..99].to_string(), Some(hash)).await.unwrap());
    }
}
