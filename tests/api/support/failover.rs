//! A steady stream of logins, token checks and logouts on two pods while a Redis topology fails
//! over, and what must hold of it (shared by the Sentinel and Cluster tests, plain and TLS): no
//! 500, 503 only while the failover lasts, and every logout acknowledged with 204 still revoked
//! on both pods once the cache bound has passed.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::support::*;

/// The stream's workers and what they saw.
#[derive(Default)]
pub struct Stream {
    /// Every answer: when, its status, and which step it answered.
    answers: Mutex<Vec<(Instant, StatusCode, &'static str)>>,
    /// Access tokens whose logout was answered 204.
    revoked: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Stream {
    /// Runs until [`stop`](Self::stop): one worker per direction, each logging `email` in on
    /// one pod, checking the token on the other, logging out on the first and checking again.
    pub async fn run(&self, a: &TestApp, b: &TestApp, email: &str) {
        futures_util::future::join(self.worker(a, b, email), self.worker(b, a, email)).await;
    }

    async fn worker(&self, first: &TestApp, second: &TestApp, email: &str) {
        let note = |step: &'static str, status: StatusCode| {
            let mut answers = self.answers.lock().expect("lock");
            answers.push((Instant::now(), status, step));
        };
        while !self.stop.load(Ordering::Relaxed) {
            let r = first.login_reply(email, PASSWORD).await;
            note("login", r.status);
            let Some(access) = r.body["access_token"].as_str().map(str::to_string) else {
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            note("check", second.get("/session", Some(&access)).await.status);
            let out = first.post_auth("/logout", &access).await.status;
            note("logout", out);
            if out == StatusCode::NO_CONTENT {
                self.revoked.lock().expect("lock").push(access.clone());
            }
            note(
                "check after logout",
                second.get("/session", Some(&access)).await.status,
            );
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the last 20 answers all came after `since` and none was a 5xx: traffic flows
    /// normally again.
    fn healthy_since(&self, since: Instant) -> bool {
        let answers = self.answers.lock().expect("lock");
        let last = &answers[answers.len().saturating_sub(20)..];
        last.len() == 20
            && last
                .iter()
                .all(|(at, s, _)| *at > since && !s.is_server_error())
    }

    /// Waits (up to 20 s) for the traffic to flow normally after `since`, then stops the stream.
    pub async fn stop_once_healthy(&self, since: Instant) {
        let healthy = eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            async || self.healthy_since(since),
        )
        .await;
        self.stop();
        assert!(healthy, "traffic never recovered after the failover");
    }

    /// The answers: only the expected statuses of each step (a session acknowledged just
    /// before the kill may be lost with the master, as creation is not WAITed for: 401 is
    /// allowed for it), 503 only from `killed_at` until `margin` past `recovered_at`, a steady
    /// stream before the kill, and logouts acknowledged before it.
    pub fn assert_answers(&self, killed_at: Instant, recovered_at: Instant, margin: Duration) {
        let answers = self.answers.lock().expect("lock");
        let unavailable: Vec<_> = answers
            .iter()
            .filter(|(_, s, _)| s.as_u16() == 503)
            .collect();
        eprintln!(
            "failover: {} answers, {} of them 503 between {:?} and {:?} after the kill; \
             recovered {:?} after it",
            answers.len(),
            unavailable.len(),
            unavailable.first().map(|(at, _, _)| *at - killed_at),
            unavailable.last().map(|(at, _, _)| *at - killed_at),
            recovered_at - killed_at,
        );
        for (at, status, step) in answers.iter() {
            let when = at.saturating_duration_since(killed_at);
            let expected: &[u16] = match *step {
                "login" => &[200],
                "logout" => &[204, 401],
                _ => &[200, 401],
            };
            if status.as_u16() == 503 {
                assert!(
                    *at >= killed_at && *at <= recovered_at + margin,
                    "{step} answered 503 {when:?} after the kill, outside the failover \
                     (recovered after {:?})",
                    recovered_at - killed_at
                );
            } else {
                assert!(
                    expected.contains(&status.as_u16()),
                    "{step} answered {status} ({when:?} after the kill)"
                );
            }
        }
        let before = |step: &str, status: u16| {
            answers
                .iter()
                .filter(|(at, s, st)| *at < killed_at && *st == step && s.as_u16() == status)
                .count()
        };
        assert!(before("login", 200) >= 3, "the stream was not steady");
        assert!(before("logout", 204) >= 1, "no logout before the kill");
    }

    /// Once the cache bound (`cache_ttl`) has passed: every logout answered 204 is refused on
    /// every pod.
    pub async fn assert_logouts_hold(&self, pods: &[&TestApp], cache_ttl: Duration) {
        let revoked = self.revoked.lock().expect("lock").clone();
        assert!(!revoked.is_empty(), "no logout was acknowledged");
        actix_web::rt::time::sleep(cache_ttl).await;
        for token in &revoked {
            for pod in pods {
                pod.get("/session", Some(token))
                    .await
                    .assert_error(401, "unauthorized");
            }
        }
    }

    /// Logins answered 200 after `at`.
    pub fn logins_after(&self, at: Instant) -> usize {
        let answers = self.answers.lock().expect("lock");
        answers
            .iter()
            .filter(|(t, s, step)| *t > at && *step == "login" && *s == StatusCode::OK)
            .count()
    }
}
