//! Revocation webhooks, from a receiver's point of view: a server on 127.0.0.1 that verifies
//! every signature as the Standard Webhooks specification says (recomputed HMAC, timestamp
//! within five minutes), is down for a while, and still gets every event exactly once after
//! dropping duplicates by `webhook-id`; a pod restart does not lose what was pending.
use std::{
    collections::HashMap,
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::{
    admin, call, create_role, eventually, plain, set_roles, with_admins, Account, Backend,
    Deployment, TestApp, PASSWORD,
};

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The receiver's tolerance for `webhook-timestamp`, as the specification recommends.
const TOLERANCE_SECONDS: i64 = 300;

/// One request as the receiver got it.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// Verifies a delivery with `secret` (`whsec_<base64>`) as the specification says: the key is
/// the base64-decoded part, the signed content `id.timestamp.body`, any `v1,` signature of the
/// space-separated list may match, and the timestamp is within the tolerance.
fn verify(secret: &str, d: &Delivery) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let Ok(ts) = d.timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - ts).abs() > TOLERANCE_SECONDS {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", d.id, d.timestamp).as_bytes());
    mac.update(&d.body);
    let expected = mac.finalize().into_bytes();
    d.signature.split(' ').any(|s| {
        s.strip_prefix("v1,")
            .and_then(|b| STANDARD.decode(b).ok())
            .is_some_and(|sig| sig[..] == expected[..])
    })
}

#[derive(Default)]
struct ReceiverState {
    /// Every request, whatever was answered.
    requests: Vec<Delivery>,
    /// Requests whose signature did not verify.
    invalid: usize,
    /// Processed events by webhook-id (the first body seen).
    events: HashMap<String, Value>,
    /// Processed ids in arrival order.
    order: Vec<String>,
}

/// A webhook receiver on 127.0.0.1 (port 0). While down it answers 503; once up, it processes
/// each valid event (keeping the first of each `webhook-id`) and answers 204, except that its
/// answer to the first event it processes is "lost" (500 after processing), so that event comes
/// again, a duplicate with the same id.
struct Receiver {
    url: String,
    up: Arc<AtomicBool>,
    lose_first_answer: Arc<AtomicBool>,
    state: Arc<Mutex<ReceiverState>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(false));
        let lose_first_answer = Arc::new(AtomicBool::new(true));
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let (u, l, s) = (up.clone(), lose_first_answer.clone(), state.clone());
        let server = HttpServer::new(move || {
            let (u, l, s) = (u.clone(), l.clone(), s.clone());
            actix_web::App::new().route(
                "/hooks",
                web::post().to(move |req: HttpRequest, body: web::Bytes| {
                    let (u, l, s) = (u.clone(), l.clone(), s.clone());
                    async move { receive(&req, body, &u, &l, &s) }
                }),
            )
        })
        .listen(listener)
        .unwrap()
        .workers(1)
        .disable_signals()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            url,
            up,
            lose_first_answer,
            state,
            handle,
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// The processed events (one per webhook-id), in arrival order.
    fn events(&self) -> Vec<(String, Value)> {
        let s = self.state.lock().unwrap();
        s.order
            .iter()
            .map(|id| (id.clone(), s.events[id].clone()))
            .collect()
    }
}

fn receive(
    req: &HttpRequest,
    body: web::Bytes,
    up: &AtomicBool,
    lose_first_answer: &AtomicBool,
    state: &Mutex<ReceiverState>,
) -> HttpResponse {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let d = Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
    };
    let mut s = state.lock().unwrap();
    s.requests.push(d.clone());
    if !verify(WEBHOOK_SECRET, &d) {
        s.invalid += 1;
        return HttpResponse::Unauthorized().finish();
    }
    if !up.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let event: Value = serde_json::from_slice(&d.body).unwrap_or(Value::Null);
    match s.events.get(&d.id) {
        // A duplicate: same id, so the same event, byte for byte.
        Some(first) => assert_eq!(first, &event, "a duplicate id carried another event"),
        None => {
            s.events.insert(d.id.clone(), event);
            s.order.push(d.id.clone());
            if lose_first_answer.swap(false, Ordering::SeqCst) {
                return HttpResponse::InternalServerError().finish();
            }
        }
    }
    HttpResponse::NoContent().finish()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
    }
}

/// A `delivered`/`retried`/`failed` count from the pod's /metrics.
async fn deliveries(app: &TestApp, outcome: &str) -> f64 {
    app.metric(&format!(
        "sessiond_webhook_deliveries_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

async fn webhook_events_arrive_exactly_once_after_an_outage(backend: Backend) {
    // Arrange: the receiver is down; an admin, a user with three sessions, a role to grant.
    let receiver = Receiver::start();
    let (mut dep, emails) = with_admins(backend, 1).await;
    let boss_id = admin_before_webhooks(&dep, &emails[0]).await;
    dep.set("WEBHOOK_URLS", &receiver.url);
    dep.set("WEBHOOK_SECRET", WEBHOOK_SECRET);
    let app = dep.spawn().await;
    let boss = Account {
        id: boss_id,
        email: emails[0].clone(),
        tokens: app.login(&emails[0], PASSWORD).await,
    };
    let user = plain(&app).await;
    let second = app.login(&user.email, PASSWORD).await;
    // A third session, which the password change ends.
    app.login(&user.email, PASSWORD).await;
    let doomed = plain(&app).await;
    assert_eq!(
        create_role(&app, &boss.tokens.access, "support", &["users:read"])
            .await
            .status,
        StatusCode::CREATED
    );

    // Act: every kind of event, while the receiver answers 503.
    let r = app.post_auth("/logout", &user.tokens.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = set_roles(&app, &boss.tokens.access, &user.id, &["user", "support"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body = json!({"current_password": PASSWORD, "new_password": "a different horse battery"});
    let r = app
        .request(
            Method::PUT,
            "/profile/password",
            &second.access,
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let fresh = app.login(&user.email, "a different horse battery").await;
    let r = app.post_auth("/logout/all", &fresh.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let path = format!("/admin/users/{}/sessions", user.id);
    let r = call(&app, Method::DELETE, &path, Some(&boss.tokens.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let path = format!("/admin/users/{}/disable", user.id);
    let r = call(&app, Method::POST, &path, Some(&boss.tokens.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let path = format!("/admin/users/{}", doomed.id);
    let r = call(&app, Method::DELETE, &path, Some(&boss.tokens.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let expected = 7;

    // The receiver is down: attempts come, fail, and are retried.
    let retried = eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        async || {
            receiver.requests() >= expected && deliveries(&app, "retried").await >= expected as f64
        },
    )
    .await;
    assert!(retried, "no retries while the receiver was down");
    assert!(receiver.events().is_empty());
    assert!(app.metric("sessiond_webhook_pending").await >= 1.0);

    // The receiver comes back: every event arrives.
    receiver.set_up(true);
    let all = eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            receiver.events().len() >= expected
                && app.metric("sessiond_webhook_pending").await == 0.0
        },
    )
    .await;
    assert!(all, "events missing: {:?}", receiver.events());

    // Assert: exactly these events, once each by webhook-id, every signature valid.
    let events = receiver.events();
    let uid = |v: &Value| v["data"]["user_id"].as_str().unwrap_or("").to_string();
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|(_, e)| (e["type"].as_str().unwrap().to_string(), uid(e)))
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = [
        ("session.revoked", &user.id),
        ("user.roles_changed", &user.id),
        ("user.password_changed", &user.id),
        ("user.sessions_revoked", &user.id),
        ("user.sessions_revoked", &user.id),
        ("user.disabled", &user.id),
        ("user.deleted", &doomed.id),
    ]
    .iter()
    .map(|(t, u)| (t.to_string(), u.to_string()))
    .collect();
    want.sort();
    assert_eq!(seen, want, "{events:#?}");
    let of = |t: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|(_, e)| e["type"] == t)
            .map(|(_, e)| e.clone())
            .collect()
    };
    let logout = &of("session.revoked")[0];
    assert_eq!(logout["data"]["session_id"], json!(user.tokens.session_id));
    assert_eq!(logout["data"]["reason"], "logout");
    assert!(logout["timestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some());
    let roles = &of("user.roles_changed")[0];
    assert_eq!(roles["data"]["roles"], json!(["support", "user"]));
    assert_eq!(roles["data"]["previous"], json!(["user"]));
    let password = &of("user.password_changed")[0];
    assert_eq!(
        password["data"]["kept_session_id"],
        json!(second.session_id)
    );
    let mut reasons: Vec<String> = of("user.sessions_revoked")
        .iter()
        .map(|e| e["data"]["reason"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["admin", "logout_all"]);

    {
        let s = receiver.state.lock().unwrap();
        assert_eq!(s.invalid, 0, "every delivery verifies");
        let first_id = &s.order[0];
        let copies = s.requests.iter().filter(|d| &d.id == first_id).count();
        assert!(copies >= 2, "the event whose answer was lost came again");
        // Sanity: the receiver's check does reject a signature made with another secret.
        let wrong = "whsec_dGhpcyBpcyBhbm90aGVyIDI0IGJ5dGUga2V5IQ==";
        assert!(s.requests.iter().all(|d| !verify(wrong, d)));
    }
    // The lost answer counts as a retry: each event was delivered once.
    assert_eq!(deliveries(&app, "delivered").await, expected as f64);
    assert_eq!(deliveries(&app, "failed").await, 0.0);
    app.stop().await;
}

async fn pending_webhooks_are_delivered_after_a_pod_restart(backend: Backend) {
    // Arrange: the receiver is down while a pod records a logout.
    let receiver = Receiver::start();
    receiver.lose_first_answer.store(false, Ordering::SeqCst);
    let (mut dep, _) = with_admins(backend, 0).await;
    dep.set("WEBHOOK_URLS", &receiver.url);
    dep.set("WEBHOOK_SECRET", WEBHOOK_SECRET);
    let first = dep.spawn().await;
    let user = plain(&first).await;
    let r = first.post_auth("/logout", &user.tokens.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let tried = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || receiver.requests() >= 1,
    )
    .await;
    assert!(tried);
    let id = receiver.state.lock().unwrap().requests[0].id.clone();

    // Act: the pod stops with the webhook pending; the receiver recovers with no pod running,
    // then another pod starts on the same database.
    first.stop().await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    receiver.set_up(true);
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.events().is_empty(), "no pod runs: nothing is sent");
    let second = dep.spawn().await;

    // Assert: the new pod delivers it, with the id the first pod's attempts carried.
    let delivered = eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || !receiver.events().is_empty(),
    )
    .await;
    assert!(delivered, "the pending webhook was lost with the pod");
    let events = receiver.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, id);
    assert_eq!(events[0].1["type"], "session.revoked");
    assert_eq!(events[0].1["data"]["user_id"], json!(user.id));
    assert_eq!(
        events[0].1["data"]["session_id"],
        json!(user.tokens.session_id)
    );
    assert_eq!(receiver.state.lock().unwrap().invalid, 0);
    second.stop().await;
}

/// Two pods poll one outbox: each row is claimed by one of them, so with a receiver that always
/// answers, every webhook is sent exactly once (no duplicate even before deduplication).
async fn two_pods_never_send_one_webhook_twice() {
    let receiver = Receiver::start();
    receiver.lose_first_answer.store(false, Ordering::SeqCst);
    receiver.set_up(true);
    let (mut dep, _) = with_admins(Backend::Services, 0).await;
    dep.set("WEBHOOK_URLS", &receiver.url);
    dep.set("WEBHOOK_SECRET", WEBHOOK_SECRET);
    let pods = [dep.spawn().await, dep.spawn().await];
    let user = plain(&pods[0]).await;
    let mut sessions = Vec::new();
    for i in 0..20 {
        sessions.push(pods[i % 2].login(&user.email, PASSWORD).await);
    }
    // Logouts on both pods at once, so both workers find rows due at the same moments.
    let logouts = sessions.iter().enumerate().map(|(i, t)| {
        let pod = &pods[i % 2];
        async move { pod.post_auth("/logout", &t.access).await.status }
    });
    let statuses = futures_util::future::join_all(logouts).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::NO_CONTENT));

    let all = eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || receiver.events().len() >= sessions.len(),
    )
    .await;
    assert!(all, "missing: {:?}", receiver.events().len());
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    {
        let s = receiver.state.lock().unwrap();
        assert_eq!(s.invalid, 0);
        assert_eq!(s.requests.len(), sessions.len(), "a webhook was sent twice");
        let mut got: Vec<&str> = s
            .events
            .values()
            .map(|e| e["data"]["session_id"].as_str().unwrap())
            .collect();
        got.sort();
        let mut want: Vec<&str> = sessions.iter().map(|t| t.session_id.as_str()).collect();
        want.sort();
        assert_eq!(got, want);
    }
    let delivered =
        deliveries(&pods[0], "delivered").await + deliveries(&pods[1], "delivered").await;
    assert_eq!(delivered, sessions.len() as f64);
    for pod in &pods {
        pod.stop().await;
    }
}

crate::both_backends!(
    webhook_events_arrive_exactly_once_after_an_outage,
    pending_webhooks_are_delivered_after_a_pod_restart,
);
crate::services_only!(two_pods_never_send_one_webhook_twice);

/// Runs one SQL statement on the deployment's database (either backend).
async fn sql(db: &sea_orm::DatabaseConnection, statement: &str) {
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// Outbox rows by state (0 pending, 1 delivered, 2 failed) and event type, read directly.
/// An admin (ADMIN_EMAILS, its address proven) made before the webhooks are configured, so
/// its grant is no event the test counts; its id.
async fn admin_before_webhooks(dep: &Deployment, email: &str) -> String {
    let app = dep.spawn().await;
    let id = admin(&app, email).await.id;
    app.stop().await;
    id
}

async fn outbox_rows(db: &sea_orm::DatabaseConnection) -> Vec<(i16, String, i32)> {
    use sea_orm::{ConnectionTrait, Statement};
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT state, event_type, attempts FROM webhook_outbox ORDER BY created_at_ms, id",
        ))
        .await
        .expect("outbox readable");
    rows.iter()
        .map(|r| {
            (
                r.try_get::<i16>("", "state").expect("state"),
                r.try_get::<String>("", "event_type").expect("event_type"),
                r.try_get::<i32>("", "attempts").expect("attempts"),
            )
        })
        .collect()
}

/// No change without its event: while the outbox cannot be written (here: its table is away,
/// as a crash between the two writes would leave it), every change that emits a webhook is
/// refused and leaves nothing changed; database changes because the event is written in their
/// own transaction, session revocations (Redis) because the event is written ahead of them.
/// Once the outbox is back, the same changes succeed and each one's row is stored by the time
/// the API answers.
async fn a_change_whose_event_cannot_be_stored_does_not_happen(backend: Backend) {
    let receiver = Receiver::start();
    receiver.lose_first_answer.store(false, Ordering::SeqCst);
    receiver.set_up(true);
    let (mut dep, emails) = with_admins(backend, 1).await;
    let boss_id = admin_before_webhooks(&dep, &emails[0]).await;
    dep.set("WEBHOOK_URLS", &receiver.url);
    dep.set("WEBHOOK_SECRET", WEBHOOK_SECRET);
    let app = dep.spawn().await;
    let boss = Account {
        id: boss_id,
        email: emails[0].clone(),
        tokens: app.login(&emails[0], PASSWORD).await,
    };
    let user = plain(&app).await;
    let doomed = plain(&app).await;
    let other = plain(&app).await;
    let r = create_role(&app, &boss.tokens.access, "support", &["users:read"]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let db = sea_orm::Database::connect(dep.database_url())
        .await
        .expect("db");
    sql(
        &db,
        "ALTER TABLE webhook_outbox RENAME TO webhook_outbox_away",
    )
    .await;

    // Act and assert: each change fails, and did not happen.
    let r = set_roles(&app, &boss.tokens.access, &user.id, &["user", "support"]).await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.body);
    let path = format!("/admin/users/{}", user.id);
    let r = call(&app, Method::GET, &path, Some(&boss.tokens.access), None).await;
    assert_eq!(r.body["roles"], json!(["user"]), "roles unchanged");

    let second = app.login(&user.email, PASSWORD).await;
    let body = json!({"current_password": PASSWORD, "new_password": "a different horse battery"});
    let r = app
        .request(
            Method::PUT,
            "/profile/password",
            &second.access,
            Some(&body),
        )
        .await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.body);
    let r = app
        .login_reply(&user.email, "a different horse battery")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "password unchanged");

    let r = app.post_auth("/logout", &second.access).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(
        app.get("/session", Some(&second.access)).await.status,
        StatusCode::OK,
        "not logged out"
    );
    let r = app.post_auth("/logout/all", &second.access).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(
        app.get("/session", Some(&second.access)).await.status,
        StatusCode::OK,
        "not logged out"
    );

    // (Its sessions end first, fail closed, as documented for disabling; the account is not
    // marked disabled, so no event is owed.)
    let path = format!("/admin/users/{}/disable", user.id);
    let r = call(&app, Method::POST, &path, Some(&boss.tokens.access), None).await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.body);
    let path = format!("/admin/users/{}", user.id);
    let r = call(&app, Method::GET, &path, Some(&boss.tokens.access), None).await;
    assert_eq!(r.body["disabled"], json!(false), "not disabled");

    let path = format!("/admin/users/{}", doomed.id);
    let r = call(&app, Method::DELETE, &path, Some(&boss.tokens.access), None).await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.body);
    let r = call(&app, Method::GET, &path, Some(&boss.tokens.access), None).await;
    assert_eq!(r.status, StatusCode::OK, "not deleted");

    // The outbox is back: the changes succeed, each row stored by the time of the answer.
    sql(
        &db,
        "ALTER TABLE webhook_outbox_away RENAME TO webhook_outbox",
    )
    .await;
    let r = set_roles(&app, &boss.tokens.access, &user.id, &["user", "support"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let types = |rows: Vec<(i16, String, i32)>| -> Vec<String> {
        rows.into_iter().map(|(_, t, _)| t).collect()
    };
    assert_eq!(types(outbox_rows(&db).await), ["user.roles_changed"]);
    let r = call(&app, Method::DELETE, &path, Some(&boss.tokens.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        types(outbox_rows(&db).await),
        ["user.roles_changed", "user.deleted"]
    );
    let r = app.post_auth("/logout", &other.tokens.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        types(outbox_rows(&db).await),
        ["user.roles_changed", "user.deleted", "session.revoked"]
    );

    // The receiver gets these three, and nothing of the refused attempts.
    let all = eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        async || receiver.events().len() >= 3,
    )
    .await;
    assert!(all, "{:?}", receiver.events());
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let mut got: Vec<String> = receiver
        .events()
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap_or("").to_string())
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["session.revoked", "user.deleted", "user.roles_changed"]
    );
    let _ = db.close().await;
    app.stop().await;
}

/// A receiver that never recovers: once WEBHOOK_GIVE_UP_SECONDS have passed since the event,
/// its row is marked failed, counted as such, and not tried again.
async fn a_webhook_is_given_up_after_its_retry_window(backend: Backend) {
    let receiver = Receiver::start();
    receiver.lose_first_answer.store(false, Ordering::SeqCst);
    let (mut dep, _) = with_admins(backend, 0).await;
    dep.set("WEBHOOK_URLS", &receiver.url)
        .set("WEBHOOK_SECRET", WEBHOOK_SECRET)
        .set("WEBHOOK_GIVE_UP_SECONDS", 3);
    let app = dep.spawn().await;
    let user = plain(&app).await;
    let r = app.post_auth("/logout", &user.tokens.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let failed = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || deliveries(&app, "failed").await >= 1.0,
    )
    .await;
    assert!(failed, "the event was never given up");
    let db = sea_orm::Database::connect(dep.database_url())
        .await
        .expect("db");
    let rows = outbox_rows(&db).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (state, event_type, attempts) = rows[0].clone();
    assert_eq!((state, event_type.as_str()), (2, "session.revoked"));
    assert!(attempts >= 2, "retried before giving up: {attempts}");
    let tried = receiver.requests();
    assert_eq!(tried, attempts as usize, "one request per recorded attempt");

    // Nothing more is sent, and nothing is pending.
    actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(receiver.requests(), tried, "no attempt after giving up");
    assert_eq!(deliveries(&app, "failed").await, 1.0);
    assert_eq!(deliveries(&app, "delivered").await, 0.0);
    assert_eq!(app.metric("sessiond_webhook_pending").await, 0.0);
    assert!(receiver.events().is_empty());
    let _ = db.close().await;
    app.stop().await;
}

crate::both_backends!(
    a_change_whose_event_cannot_be_stored_does_not_happen,
    a_webhook_is_given_up_after_its_retry_window,
);
