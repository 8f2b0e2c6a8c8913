//! Prometheus metrics of this process, in one registry served at GET /metrics. Names follow the
//! conventions: `sessiond_` prefix, base units, `_total` counters, `_seconds` histograms, and
//! low-cardinality labels (route templates, never raw paths or ids).
use std::{future::Future, time::Instant};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// method, route (template), status
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// outcome: success, mfa_required, invalid_credentials, throttled, error
    pub logins: IntCounterVec,
    /// Identity-provider sign-ins by provider and outcome: success, account_exists,
    /// email_not_verified, access_denied, provider_error, linked, invalid_grant, mfa_required.
    pub oauth_signins: IntCounterVec,
    /// Second factors presented: method (totp, recovery_code, webauthn), outcome (success, invalid, replay, error).
    pub mfa: IntCounterVec,
    /// POST /reauthenticate and step-up checks by outcome: success, invalid_credentials,
    /// invalid_factor, factor_required, no_password, throttled, error; `required`: a sensitive
    /// change refused for want of a recent authentication.
    pub reauthentications: IntCounterVec,
    /// WebAuthn ceremonies: ceremony (registration, sign_in), outcome (started, success,
    /// invalid, no_ceremony, throttled, email_not_verified, error). Second factors count in `mfa`.
    pub webauthn: IntCounterVec,
    pub registrations: IntCounter,
    pub sessions_created: IntCounter,
    pub sessions_revoked: IntCounter,
    /// Session records in Redis whose seal did not verify (each was treated as revoked).
    pub seal_failures: IntCounter,
    /// One-time records in the session store whose seal did not verify (each was refused as an
    /// unknown one and deleted), by kind: oauth-state, oauth-code, webauthn-reg,
    /// webauthn-signin, webauthn-mfa, webauthn-reauth, mfa-login.
    pub record_seal_failures: IntCounterVec,
    /// Children of `sessiond_token_checks_total{outcome}`, resolved once: the hot path bumps a
    /// counter without a label lookup.
    pub token_checks: TokenChecks,
    pub redis: RedisMetrics,
    pub db: CallMetrics,
    pub invalidations_published: IntCounter,
    pub invalidations_received: IntCounter,
    /// From the publish (Redis clock) to the receipt (this pod's clock) of a stamped revocation.
    pub revocation_propagation: Histogram,
    pub cache_flushes: IntCounter,
    pub pubsub_resubscriptions: IntCounter,
    /// 1 while this pod hears every revocation (subscribed, or the in-process store), else 0.
    pub invalidation_link_up: IntGauge,
    /// Subscribed pub/sub connections: 1, or on a cluster one per master that answered.
    pub invalidation_links: IntGauge,
    pub argon2_queue_wait: Histogram,
    pub argon2_in_flight: IntGauge,
    pub argon2_rejected: IntCounter,
    /// outcome: written, dropped (queue full or shutdown), and failed write attempts (retried)
    pub audit_events: IntCounterVec,
    pub audit_queue: IntGauge,
    /// outcome: delivered (2xx), retried (a failed attempt, tried again later), failed (given up)
    pub webhook_deliveries: IntCounterVec,
    /// Outbox rows waiting for delivery, all pods together (read from the database).
    pub webhook_pending: IntGauge,
    /// From the event to the receiver's 2xx.
    pub webhook_lag: Histogram,
    /// outcome: sent (accepted by SMTP), logged (no SMTP_URL: written to the log, not sent),
    /// retried (a failed attempt, tried again later), failed (given up)
    pub mail_deliveries: IntCounterVec,
    /// Mails waiting in the outbox, all pods together (read from the database).
    pub mail_pending: IntGauge,
}

#[derive(Clone)]
pub struct TokenChecks {
    pub cache_hit: IntCounter,
    pub cache_miss: IntCounter,
    pub rejected: IntCounter,
    pub unavailable: IntCounter,
}

/// Redis calls, and the WAITs that make revocations durable.
#[derive(Clone)]
pub struct RedisMetrics {
    pub calls: CallMetrics,
    pub wait: WaitOutcomes,
}

/// Children of `sessiond_redis_wait_total{outcome}`, created at start so every outcome is
/// rendered (and `rate()` works) before it first happens.
#[derive(Clone)]
pub struct WaitOutcomes {
    /// Every required replica acknowledged.
    pub ok: IntCounter,
    /// Fewer replicas acknowledged within REDIS_WAIT_TIMEOUT_MS: the request answered 503.
    pub short: IntCounter,
    /// The WAIT itself failed or timed out (connection lost, failover): 503.
    pub error: IntCounter,
}

/// Latency and errors of calls to one backing service, by operation.
#[derive(Clone)]
pub struct CallMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
}

impl CallMetrics {
    /// Times `fut` and counts it as an error when it fails (timeouts included, by the caller's
    /// error type).
    pub async fn observe<T, E>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = fut.await;
        self.duration
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors.with_label_values(&[op]).inc();
        }
        result
    }
}

// Metric definitions are static: registering them cannot fail except by a programming error,
// which the unit test below catches.
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, HistogramVec::new(opts, labels).expect("valid metric"))
}

/// 100 µs to 10 s: the hot path answers in well under a millisecond, logins take ~50 ms+.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Called once per process at start-up (not on a request path).
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("sessiond".into()), None).expect("valid prefix");
        let checks = counter_vec(
            &r,
            "token_checks_total",
            "Bearer token checks by outcome.",
            &["outcome"],
        );
        let call = |service: &str, what: &str| CallMetrics {
            duration: histogram_vec(
                &r,
                &format!("{service}_call_duration_seconds"),
                &format!("Latency of {what} calls by operation."),
                &["op"],
                LATENCY_BUCKETS,
            ),
            errors: counter_vec(
                &r,
                &format!("{service}_call_errors_total"),
                &format!("Failed or timed-out {what} calls by operation."),
                &["op"],
            ),
        };
        let wait = counter_vec(
            &r,
            "redis_wait_total",
            "WAITs for REDIS_WAIT_REPLICAS replicas after a revocation, by outcome: ok, short (fewer replicas in time: 503), error.",
            &["outcome"],
        );
        let redis = RedisMetrics {
            calls: call("redis", "Redis"),
            wait: WaitOutcomes {
                ok: wait.with_label_values(&["ok"]),
                short: wait.with_label_values(&["short"]),
                error: wait.with_label_values(&["error"]),
            },
        };
        let db = call("db", "database");
        let build_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "build_info",
                    "Version and git revision of this build; always 1.",
                ),
                &["version", "revision"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SESSIOND_GIT_REVISION")])
            .set(1);
        Self {
            http_requests: counter_vec(
                &r,
                "http_requests_total",
                "HTTP requests by method, route template and status.",
                &["method", "route", "status"],
            ),
            http_duration: histogram_vec(
                &r,
                "http_request_duration_seconds",
                "HTTP request latency by method, route template and status.",
                &["method", "route", "status"],
                LATENCY_BUCKETS,
            ),
            logins: counter_vec(
                &r,
                "logins_total",
                "Sign-in attempts by way in (password, mfa, passkey, federation) and outcome.",
                &["method", "outcome"],
            ),
            oauth_signins: counter_vec(
                &r,
                "oauth_signins_total",
                "Sign-ins through identity providers by provider and outcome.",
                &["provider", "outcome"],
            ),
            mfa: counter_vec(
                &r,
                "mfa_verifications_total",
                "Second factors presented at login, by method and outcome.",
                &["method", "outcome"],
            ),
            reauthentications: counter_vec(
                &r,
                "reauthentications_total",
                "POST /reauthenticate by outcome, and sensitive changes refused for want of a recent authentication (outcome required).",
                &["outcome"],
            ),
            webauthn: counter_vec(
                &r,
                "webauthn_ceremonies_total",
                "WebAuthn registrations and passkey sign-ins, by ceremony and outcome.",
                &["ceremony", "outcome"],
            ),
            registrations: counter(&r, "registrations_total", "Accounts registered."),
            sessions_created: counter(&r, "sessions_created_total", "Sessions created by logins."),
            sessions_revoked: counter(
                &r,
                "sessions_revoked_total",
                "Sessions revoked (logout, revoke-all, reuse).",
            ),
            seal_failures: counter(
                &r,
                "session_seal_failures_total",
                "Session records in Redis refused and revoked because their MAC did not verify.",
            ),
            record_seal_failures: counter_vec(
                &r,
                "record_seal_failures_total",
                "One-time records (sign-in states and codes, pending MFA logins, WebAuthn ceremonies) refused and deleted because their MAC did not verify, by kind.",
                &["kind"],
            ),
            token_checks: TokenChecks {
                cache_hit: checks.with_label_values(&["cache_hit"]),
                cache_miss: checks.with_label_values(&["cache_miss"]),
                rejected: checks.with_label_values(&["rejected"]),
                unavailable: checks.with_label_values(&["unavailable"]),
            },
            redis,
            db,
            invalidations_published: counter(
                &r,
                "invalidations_published_total",
                "Revocation messages published on the invalidation channel.",
            ),
            invalidations_received: counter(
                &r,
                "invalidations_received_total",
                "Invalidation messages received from the channel.",
            ),
            revocation_propagation: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "revocation_propagation_seconds",
                        "Time from the publish of a session revocation (Redis clock) to its receipt by this pod.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            cache_flushes: counter(
                &r,
                "session_cache_flushes_total",
                "Times the local session cache was emptied after (re)subscribing.",
            ),
            pubsub_resubscriptions: counter(
                &r,
                "pubsub_resubscriptions_total",
                "Times the invalidation subscription was re-established after a loss.",
            ),
            invalidation_link_up: register(
                &r,
                IntGauge::new(
                    "invalidation_link_up",
                    "1 while this pod is subscribed to invalidations (always with the in-process store); 0 while it is not and checks every token against Redis.",
                )
                .expect("valid metric"),
            ),
            invalidation_links: register(
                &r,
                IntGauge::new(
                    "invalidation_links",
                    "Connections this pod hears invalidations on: 1 (0 while resubscribing), or on a Redis Cluster one per master that answered (any one hears every message; the master that published delivers it first).",
                )
                .expect("valid metric"),
            ),
            argon2_queue_wait: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "argon2_queue_wait_seconds",
                        "Time spent waiting for a password-hashing slot.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            argon2_in_flight: register(
                &r,
                IntGauge::new("argon2_in_flight", "Password hashes running now.")
                    .expect("valid metric"),
            ),
            argon2_rejected: counter(
                &r,
                "argon2_rejected_total",
                "Hash requests refused (503) because the pool stayed saturated.",
            ),
            audit_events: counter_vec(
                &r,
                "audit_events_total",
                "Audit events by fate: written, dropped (queue full), write_failed (attempts, retried).",
                &["outcome"],
            ),
            audit_queue: register(
                &r,
                IntGauge::new("audit_queue_length", "Audit events waiting to be written.")
                    .expect("valid metric"),
            ),
            webhook_deliveries: counter_vec(
                &r,
                "webhook_deliveries_total",
                "Webhook delivery attempts by outcome: delivered (2xx), retried (failed, tried again later), failed (given up or not stored).",
                &["outcome"],
            ),
            webhook_pending: register(
                &r,
                IntGauge::new(
                    "webhook_pending",
                    "Webhooks waiting in the outbox for delivery (every pod's).",
                )
                .expect("valid metric"),
            ),
            webhook_lag: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "webhook_delivery_lag_seconds",
                        "Time from an event to its webhook's 2xx answer, retries included.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            mail_deliveries: counter_vec(
                &r,
                "mail_deliveries_total",
                "Mail delivery attempts by outcome: sent (accepted by the SMTP server), logged (no SMTP_URL: written to the log, not sent), retried (failed, tried again later), failed (given up).",
                &["outcome"],
            ),
            mail_pending: register(
                &r,
                IntGauge::new(
                    "mail_pending",
                    "Mails waiting in the outbox for delivery (every pod's).",
                )
                .expect("valid metric"),
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::new();
        m.logins.with_label_values(&["password", "success"]).inc();
        let text = m.render();
        assert!(text.contains("sessiond_build_info{"));
        assert!(text.contains("sessiond_logins_total{method=\"password\",outcome=\"success\"} 1"));
        assert!(text.contains("sessiond_redis_wait_total{outcome=\"short\"} 0"));
    }
}
