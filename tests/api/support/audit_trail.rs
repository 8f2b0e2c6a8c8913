//! The audit trail, read back through GET /admin/audit.
use std::time::Duration;

use super::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

// The audit trail, read back through GET /admin/audit.

/// How long an asynchronous audit write may take to show up.
pub const AUDIT_ARRIVAL: Duration = Duration::from_secs(10);
/// How long to keep watching for a late duplicate once the expected count is reached.
pub const AUDIT_SETTLE: Duration = Duration::from_millis(300);

/// The events GET /admin/audit?`query` returns once there are `expected` of them, after making
/// sure no further one arrives; newest first.
pub async fn settled(app: &TestApp, token: &str, query: &str, expected: usize) -> Vec<Value> {
    let path = format!("/admin/audit?{query}&per_page=200");
    let mut last = Value::Null;
    let reached = eventually(AUDIT_ARRIVAL, Duration::from_millis(50), async || {
        let r = app.get(&path, Some(token)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        last = r.body;
        last["total"].as_u64().is_some_and(|n| n >= expected as u64)
    })
    .await;
    assert!(reached, "{expected} events for {query}; last page: {last}");
    actix_web::rt::time::sleep(AUDIT_SETTLE).await;
    let r = app.get(&path, Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["total"], expected,
        "exactly {expected} events for {query}: {}",
        r.body
    );
    let items = r.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), expected, "{}", r.body);
    for item in &items {
        if let Some(kind) = query.split('&').find_map(|kv| kv.strip_prefix("type=")) {
            assert_eq!(item["type"], kind, "{item}");
        }
    }
    items
}

/// Asserts the event object's shape and its type, actor, subject and outcome.
#[track_caller]
pub fn assert_event(
    event: &Value,
    kind: &str,
    actor: Option<&str>,
    subject: Option<&str>,
    outcome: &str,
) {
    let id = event["id"].as_str().unwrap_or_default();
    assert!(Uuid::parse_str(id).is_ok(), "id is a UUID: {event}");
    let at = event["occurred_at"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok(),
        "occurred_at is RFC 3339: {event}"
    );
    assert!(
        event["ip"].is_null() || event["ip"].is_string(),
        "ip is a string or null: {event}"
    );
    assert!(event["detail"].is_object(), "detail is an object: {event}");
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(event["actor_id"], json!(actor), "actor of {event}");
    assert_eq!(event["subject_id"], json!(subject), "subject of {event}");
    assert_eq!(event["outcome"], outcome, "{event}");
}
