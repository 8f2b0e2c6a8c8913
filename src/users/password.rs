//! argon2id on a bounded blocking pool: at most `max_concurrency` hashes at once (each holds
//! `memory_kib` of RAM), never on an actix worker or actor thread. Excess callers wait up to
//! `queue_timeout`, then get [`PasswordError::Busy`] (503) instead of piling up.
//!
//! Logins keep a share of the pool: other work (registrations, password changes) holds at most
//! `max_concurrency - 1` slots (one, if there is only one) and waits in its own queue, so a flood
//! of it can neither fill the login queue nor leave a login without a slot to wait for.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use argon2::{
    password_hash::{phc::PasswordHash, PasswordHasher as _, PasswordVerifier as _},
    Algorithm, Argon2, Params, Version,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    config::Argon2Config,
    error::{ApiError, PublicError},
    metrics::Metrics,
};

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

/// Who asks for a hash: logins get capacity the rest cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Login,
    /// Registrations, password changes, the CLI.
    Other,
}

#[derive(Clone)]
pub struct PasswordHasher {
    argon: Arc<Argon2<'static>>,
    slots: Arc<Semaphore>,
    /// Taken by non-login work before a slot, capping how many slots it can hold or wait for.
    other_slots: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Callers waiting for a slot now, per priority, and how many may (each).
    waiting_logins: Arc<AtomicUsize>,
    waiting_others: Arc<AtomicUsize>,
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
            other_slots: Arc::new(Semaphore::new(cfg.max_concurrency.saturating_sub(1).max(1))),
            queue_timeout: cfg.queue_timeout,
            waiting_logins: Arc::default(),
            waiting_others: Arc::default(),
            max_queue: cfg.max_queue,
            min_score,
            dummy_hash: Arc::from(""),
            metrics,
        };
        hasher.dummy_hash = Arc::from(hasher.hash("sessiond-timing-equaliser".into()).await?);
        Ok(hasher)
    }

    /// A permit of `sem` within `deadline`; `None` at once when `max_queue` callers of this
    /// priority already wait and nothing is free (waiting would only pile requests up).
    async fn acquire(
        &self,
        sem: &Arc<Semaphore>,
        waiting: &AtomicUsize,
        deadline: tokio::time::Instant,
    ) -> Option<OwnedSemaphorePermit> {
        let queued = waiting.fetch_add(1, Ordering::AcqRel);
        let permit = if queued >= self.max_queue && sem.available_permits() == 0 {
            None
        } else {
            tokio::time::timeout_at(deadline, sem.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        };
        waiting.fetch_sub(1, Ordering::AcqRel);
        permit
    }

    /// Runs `f` on the blocking pool once a slot is free, inside the caller's tracing span.
    async fn run<R: Send + 'static>(
        &self,
        priority: Priority,
        f: impl FnOnce(&Argon2<'static>) -> R + Send + 'static,
    ) -> Result<R, PasswordError> {
        let waited = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let permits = match priority {
            Priority::Login => self
                .acquire(&self.slots, &self.waiting_logins, deadline)
                .await
                .map(|slot| (slot, None)),
            Priority::Other => {
                // The gate first: at most its size of non-login callers ever hold or queue for a
                // slot, so they are never ahead of a login in the slots' FIFO by more than that.
                match self
                    .acquire(&self.other_slots, &self.waiting_others, deadline)
                    .await
                {
                    Some(gate) => {
                        tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .map(|slot| (slot, Some(gate)))
                    }
                    None => None,
                }
            }
        };
        self.metrics
            .argon2_queue_wait
            .observe(waited.elapsed().as_secs_f64());
        let Some(permits) = permits else {
            self.metrics.argon2_rejected.inc();
            return Err(PasswordError::Busy);
        };
        let argon = self.argon.clone();
        let span = tracing::Span::current();
        let request_id = crate::telemetry::current_request_id();
        let in_flight = self.metrics.argon2_in_flight.clone();
        tokio::task::spawn_blocking(move || {
            let _permits = permits;
            in_flight.inc();
            let result = crate::telemetry::in_request(request_id, || span.in_scope(|| f(&argon)));
            in_flight.dec();
            result
        })
        .await
        .map_err(|e| PasswordError::Internal(e.to_string()))
    }

    /// Hashes a password a user chose: it must also be hard enough to guess (zxcvbn, with the
    /// user's own words from [`crate::domain::password_context`]). Both run on the blocking pool, as
    /// non-login work.
    pub async fn hash_new(
        &self,
        password: String,
        user_inputs: Vec<String>,
    ) -> Result<String, PasswordError> {
        let min_score = self.min_score;
        self.run(Priority::Other, move |argon| {
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
        self.run(Priority::Other, move |argon| {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Internal(e.to_string()))
        })
        .await?
    }

    /// `stored` is `None` for an unknown account, and empty for an account without a password
    /// (made by a provider sign-in): the dummy hash is verified instead and the answer is always
    /// `false`, at the same cost, so neither case shows in the timing.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
        priority: Priority,
    ) -> Result<bool, PasswordError> {
        let stored = stored.filter(|s| !s.is_empty());
        let known = stored.is_some();
        let phc: Arc<str> = stored.map_or_else(|| self.dummy_hash.clone(), Arc::from);
        let ok = self
            .run(priority, move |argon| {
                PasswordHash::new(&phc)
                    .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(ok && known)
    }
}

impl PublicError for PasswordError {
    fn into_api_error(self) -> ApiError {
        match self {
            PasswordError::Busy => ApiError::Unavailable {
                what: "password hashing",
                detail: "argon2 pool saturated".into(),
            },
            PasswordError::Internal(detail) => ApiError::Internal(detail),
            e @ PasswordError::TooWeak(_) => ApiError::InvalidRequest(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hasher_with(max_queue: usize) -> PasswordHasher {
        let cfg = Argon2Config {
            memory_kib: 8192,
            iterations: 1,
            parallelism: 1,
            max_concurrency: 2,
            queue_timeout: Duration::from_secs(5),
            max_queue,
        };
        PasswordHasher::new(&cfg, 2, Metrics::new()).await.unwrap()
    }

    async fn hasher() -> PasswordHasher {
        hasher_with(8).await
    }

    /// An account without a password (empty stored hash) never matches, and is checked against
    /// the dummy hash like an unknown account: same answer, same work.
    #[actix_web::test]
    async fn an_empty_stored_hash_never_matches() {
        let hasher = hasher_with(8).await;
        for password in ["", "anything at all"] {
            assert!(!hasher
                .verify(password.into(), Some(String::new()), Priority::Login)
                .await
                .unwrap());
        }
    }

    #[actix_web::test]
    async fn logins_keep_a_slot_that_other_work_cannot_take() {
        let h = hasher_with(0).await;
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let held = {
            let h = h.clone();
            actix_web::rt::spawn(async move {
                h.run(Priority::Other, move |_| {
                    let _ = wait.recv();
                })
                .await
            })
        };
        while h.slots.available_permits() == 2 {
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        }
        // One slot is free, but non-login work already holds all it may: shed at once.
        assert!(matches!(
            h.hash("another one".into()).await,
            Err(PasswordError::Busy)
        ));
        // The free slot is the login's.
        assert!(!h
            .verify("a guess".into(), None, Priority::Login)
            .await
            .unwrap());
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        assert!(h.hash("now there is room".into()).await.is_ok());
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
        let h_ref = &h;
        let verify = |p: String, h: String| h_ref.verify(p, Some(h), Priority::Login);
        assert!(verify(long.clone(), hash.clone()).await.unwrap());
        // bcrypt would have cut both at 72 bytes; argon2 sees every byte.
        let mut other = long[..72].to_string();
        other.push_str(&"z".repeat(28));
        assert!(!verify(other, hash.clone()).await.unwrap());
        assert!(!verify(long[..99].to_string(), hash).await.unwrap());
    }
}
