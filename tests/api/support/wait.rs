//! Polling until something holds.
use std::time::Duration;

use super::*;
use reqwest::StatusCode;

/// Polls `check` every `every` until it returns true or `deadline` passes.
pub async fn eventually(
    deadline: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> bool {
    let end = std::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        actix_web::rt::time::sleep(every).await;
    }
}

/// Polls `pod` until it refuses `token`; returns how long that took after `since`.
pub async fn rejected_within(
    pod: &TestApp,
    token: &str,
    since: std::time::Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut last = StatusCode::OK;
    let ok = eventually(limit, Duration::from_millis(10), async || {
        last = pod.get("/session", Some(token)).await.status;
        assert!(
            last == StatusCode::OK || last == StatusCode::UNAUTHORIZED,
            "unexpected {last}"
        );
        last == StatusCode::UNAUTHORIZED
    })
    .await;
    ok.then(|| since.elapsed())
}
