//! Prometheus metrics of this process, in one registry served at GET /metrics.
use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub invalidations_published: IntCounter,
    pub invalidations_received: IntCounter,
    pub cache_flushes: IntCounter,
    pub pubsub_resubscriptions: IntCounter,
    pub sessions_created: IntCounter,
    pub sessions_revoked: IntCounter,
    pub registrations: IntCounter,
    /// outcome: success, invalid_credentials, error
    pub logins: IntCounterVec,
    /// Children of `sessiond_token_checks_total{outcome}`, resolved once: the hot path bumps a
    /// counter without a label lookup.
    pub token_checks: TokenChecks,
}

#[derive(Clone)]
pub struct TokenChecks {
    pub cache_hit: IntCounter,
    pub cache_miss: IntCounter,
    pub rejected: IntCounter,
    pub unavailable: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Called once per process at start-up (not on a request path).
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("sessiond".into()), None).expect("valid prefix");
        Self {
            invalidations_published: counter(
                &r,
                "invalidations_published_total",
                "Revocations broadcast on the invalidation channel.",
            ),
            invalidations_received: counter(
                &r,
                "invalidations_received_total",
                "Invalidation messages received from the channel.",
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
            sessions_created: counter(&r, "sessions_created_total", "Sessions created by logins."),
            sessions_revoked: counter(&r, "sessions_revoked_total", "Sessions revoked."),
            registrations: counter(&r, "registrations_total", "Accounts registered."),
            logins: counter_vec(&r, "logins_total", "Login attempts by outcome.", "outcome"),
            token_checks: {
                let v = counter_vec(
                    &r,
                    "token_checks_total",
                    "Bearer token checks by outcome.",
                    "outcome",
                );
                TokenChecks {
                    cache_hit: v.with_label_values(&["cache_hit"]),
                    cache_miss: v.with_label_values(&["cache_miss"]),
                    rejected: v.with_label_values(&["rejected"]),
                    unavailable: v.with_label_values(&["unavailable"]),
                }
            },
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
