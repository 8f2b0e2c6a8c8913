use reqwest::StatusCode;

use crate::{both_backends, support::*};

both_backends!(restart_keeps_users_and_redis_sessions);

async fn restart_keeps_users_and_redis_sessions(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let first = dep.spawn().await;
    let (email, tokens) = first.user().await;
    assert_eq!(
        first.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    first.stop().await;
    assert!(
        first.client.get(first.url("/health")).send().await.is_err(),
        "first instance is down"
    );

    let second = dep.spawn().await;
    second.login(&email, PASSWORD).await;
    let r = second.get("/session", Some(&tokens.access)).await;
    match backend {
        // Sessions live in Redis: the token outlives the process.
        Backend::Services => {
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            assert_eq!(r.body["session_id"], tokens.session_id.as_str());
        }
        // Sessions lived in the stopped process: they are gone, and nothing accepts the token.
        Backend::Embedded => r.assert_error(401, "unauthorized"),
    }
}
