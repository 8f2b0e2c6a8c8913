//! The real binary, as operators run it: JSON logs free of secrets, and a graceful SIGTERM.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{both_backends, support::*};

both_backends!(
    json_logs_of_a_full_flow_never_contain_secrets,
    ecs_logs_of_a_full_flow_are_ecs_documents_without_secrets,
    sigterm_lets_the_request_in_flight_finish,
    user_create_cli_reads_the_password_from_stdin_and_grants_roles,
    a_pod_before_the_migrations_is_not_ready_then_serves_without_restart,
);

struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    address: String,
}

impl Process {
    async fn start(dep: &Deployment, extra: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        cmd.env_clear()
            .envs(dep.vars())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let mut port = None;
        let started = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || {
                let l = lines.lock().expect("lines");
                port = l.iter().find_map(|line| {
                    let v: Value = serde_json::from_str(line).ok()?;
                    // `port` in JSON lines, `sessiond.port` in ECS documents.
                    (v["message"] == "sessiond starting")
                        .then(|| v["port"].as_u64().or(v["sessiond.port"].as_u64()))
                        .flatten()
                });
                port.is_some()
            },
        )
        .await;
        assert!(
            started,
            "no start-up line: {:?}",
            lines.lock().map(|l| l.clone())
        );
        let address = format!("http://127.0.0.1:{}", port.unwrap_or(0));
        Self {
            child,
            lines,
            address,
        }
    }

    fn app(&self) -> TestApp {
        TestApp::external(&self.address)
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM");
    }

    /// Waits for the exit; the exit code.
    async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        None
    }

    /// Ends a flow: SIGTERM, a clean exit, and every line it logged.
    async fn logged_flow(&mut self) -> Vec<String> {
        self.sigterm();
        assert_eq!(
            self.wait(Duration::from_secs(20)).await,
            Some(0),
            "clean exit"
        );
        let lines = self.output();
        assert!(lines.len() > 10, "the flow was logged");
        lines
    }

    fn output(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn json_logs_of_a_full_flow_never_contain_secrets(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let mut process = Process::start(&dep, &[]).await;
    let app = process.app();
    let email = "secretive@example.com";
    let password = "a very secret passphrase 9f3b";
    assert_eq!(
        app.register(email, password).await.status,
        StatusCode::CREATED
    );
    let refused = app.login_reply(email, "a wrong passphrase 12345").await;
    refused.assert_error(401, "invalid_credentials");
    let refused_id = refused
        .header("x-request-id")
        .expect("every response has a request id")
        .to_string();
    let tokens = app.login(email, password).await;
    assert_eq!(
        app.get("/profile", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    let refreshed = app
        .post_json("/token/refresh", &json!({"refresh_token": tokens.refresh}))
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let (access2, refresh2) = pair(&refreshed);
    let new_password = "another secret passphrase 77aa";
    let change = json!({"current_password": password, "new_password": new_password});
    let r = app
        .request(
            reqwest::Method::PUT,
            "/profile/password",
            &access2,
            Some(&change),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // A tampered token and a raw header value also go through the logs' reach.
    app.get("/session", Some(&format!("{access2}x")))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(
        app.post_auth("/logout", &access2).await.status,
        StatusCode::NO_CONTENT
    );
    let scrape = app.scrape().await;

    let lines = process.logged_flow().await;
    let json_lines = lines
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .count();
    assert!(
        json_lines * 10 >= lines.len() * 9,
        "LOG_FORMAT=json gives JSON lines"
    );
    // The line that ends the refused login carries the id its response returned.
    assert!(
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["request_id"] == refused_id.as_str()
                && v["status"] == 401
                && v["route"] == "/login"),
        "the refused login's line has its request id {refused_id}: {lines:#?}"
    );
    let secrets = [
        password,
        new_password,
        "a wrong passphrase 12345",
        &tokens.access,
        &tokens.refresh,
        &access2,
        &refresh2,
        SECRET,
    ];
    assert_no_secrets(
        lines.iter().chain(std::iter::once(&scrape)),
        &secrets,
        &tokens.access,
    );
}

/// The access and refresh tokens of a login or refresh reply.
fn pair(reply: &Reply) -> (String, String) {
    let token = |name: &str| reply.body[name].as_str().expect(name).to_string();
    (token("access_token"), token("refresh_token"))
}

/// No secret, no payload of the JWT `access` and no Authorization value in any of `haystacks`.
fn assert_no_secrets<'a>(
    haystacks: impl Iterator<Item = &'a String>,
    secrets: &[&str],
    access: &str,
) {
    let jwt_body = access.split('.').nth(1).unwrap_or("-");
    for haystack in haystacks {
        for secret in secrets {
            assert!(
                !haystack.contains(secret),
                "a secret reached the logs or metrics: {haystack}"
            );
        }
        // Parts of a JWT (header.payload) or the Authorization header value.
        assert!(
            !haystack.contains(jwt_body),
            "a token payload reached the logs: {haystack}"
        );
        assert!(
            !haystack.contains("Bearer ey"),
            "an Authorization value reached the logs: {haystack}"
        );
    }
}

/// The ECS fields sessiond writes, with their JSON types (ECS: `date` and `keyword` are JSON
/// strings, `long` a JSON integer, `ip` a string holding an address). Anything else must be under
/// `sessiond.` (sessiond's own fields: scalars).
const ECS_FIELDS: &[(&str, EcsType)] = &[
    ("@timestamp", EcsType::Date),
    ("log.level", EcsType::Keyword),
    ("log.logger", EcsType::Keyword),
    ("message", EcsType::Text),
    ("ecs.version", EcsType::Keyword),
    ("service.name", EcsType::Keyword),
    ("service.version", EcsType::Keyword),
    ("http.request.id", EcsType::Keyword),
    ("http.request.method", EcsType::Keyword),
    ("http.response.status_code", EcsType::Long),
    ("url.path", EcsType::Wildcard),
    ("event.duration", EcsType::Long),
    ("client.ip", EcsType::Ip),
    ("user.id", EcsType::Keyword),
    ("error.message", EcsType::Text),
];

#[derive(Clone, Copy, Debug)]
enum EcsType {
    Date,
    Keyword,
    Text,
    Wildcard,
    Long,
    Ip,
}

impl EcsType {
    fn accepts(self, v: &Value) -> bool {
        match self {
            EcsType::Date => v.as_str().is_some_and(|t| {
                chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.ends_with('Z')
            }),
            EcsType::Keyword | EcsType::Text | EcsType::Wildcard => v.is_string(),
            EcsType::Long => v.is_i64() || v.is_u64(),
            EcsType::Ip => v
                .as_str()
                .is_some_and(|a| a.parse::<std::net::IpAddr>().is_ok()),
        }
    }
}

/// Every line is one ECS document: the required fields, each field an ECS field of the right
/// type or sessiond's own under `sessiond.`.
fn assert_ecs_document(line: &str) -> serde_json::Map<String, Value> {
    let doc: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let doc = doc.as_object().cloned().expect("a JSON object per line");
    for required in ["@timestamp", "log.level", "message", "ecs.version"] {
        assert!(doc.contains_key(required), "{required} missing: {line}");
    }
    assert_eq!(doc["service.name"], "sessiond", "{line}");
    assert!(
        ["error", "warn", "info", "debug", "trace"]
            .contains(&doc["log.level"].as_str().unwrap_or("")),
        "{line}"
    );
    for (key, value) in &doc {
        match ECS_FIELDS.iter().find(|(name, _)| name == key) {
            Some((_, kind)) => assert!(kind.accepts(value), "{key} is not a {kind:?}: {line}"),
            None => assert!(
                key.starts_with("sessiond.") && !value.is_object() && !value.is_array(),
                "{key} is neither an ECS field nor sessiond's: {line}"
            ),
        }
    }
    doc
}

async fn ecs_logs_of_a_full_flow_are_ecs_documents_without_secrets(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let mut process = Process::start(&dep, &[("LOG_FORMAT", "ecs")]).await;
    let app = process.app();
    let (email, password) = (&admins[0], "an ecs secret passphrase 51c0");
    let registered = app.register(email, password).await;
    assert_eq!(registered.status, StatusCode::CREATED);
    let user_id = registered.body["id"].as_str().expect("id").to_string();
    // ADMIN_EMAILS grants `admin` at the login after the address is proven.
    verify_address_in(&dep.database_url(), email).await;
    app.login_reply(email, "a wrong passphrase 12345")
        .await
        .assert_error(401, "invalid_credentials");
    let tokens = app.login(email, password).await;
    assert_eq!(
        app.get("/profile", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    let refreshed = refresh(&app, &tokens.refresh).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let (access2, refresh2) = pair(&refreshed);
    let admin_call = app.get("/admin/users", Some(&access2)).await;
    assert_eq!(admin_call.status, StatusCode::OK, "{}", admin_call.body);
    app.get("/session", Some(&format!("{access2}x")))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(
        app.post_auth("/logout", &access2).await.status,
        StatusCode::NO_CONTENT
    );
    let lines = process.logged_flow().await;
    let docs: Vec<_> = lines.iter().map(|l| assert_ecs_document(l)).collect();
    // The line that ends each request: what, where, who, how long, how it ended.
    let ends: Vec<_> = docs
        .iter()
        .filter(|d| d.contains_key("http.response.status_code"))
        .collect();
    let end_of = |method: &str, path: &str| {
        ends.iter()
            .find(|d| d["http.request.method"] == method && d["url.path"] == path)
            .unwrap_or_else(|| panic!("no end line of {method} {path}: {ends:?}"))
    };
    for d in &ends {
        for key in [
            "http.request.id",
            "http.request.method",
            "url.path",
            "sessiond.route",
            "event.duration",
            "client.ip",
        ] {
            assert!(
                d.contains_key(key),
                "{key} missing on a request's end: {d:?}"
            );
        }
    }
    let profile = end_of("GET", "/profile");
    assert_eq!(profile["http.response.status_code"], 200);
    assert_eq!(profile["user.id"], user_id.as_str(), "who, where known");
    assert_eq!(profile["client.ip"], "127.0.0.1");
    let user = end_of("GET", "/admin/users");
    assert_eq!(user["sessiond.route"], "/admin/users");
    assert_eq!(user["user.id"], user_id.as_str());
    let refused = end_of("POST", "/login");
    assert_eq!(refused["http.response.status_code"], 401);
    assert!(
        !refused.contains_key("user.id"),
        "no user for a failed login"
    );
    assert_eq!(end_of("POST", "/logout")["http.response.status_code"], 204);
    // event.duration is in nanoseconds: the login hashed a password, well over a microsecond.
    assert!(refused["event.duration"].as_u64() > Some(1_000));

    let secrets = [
        password,
        "a wrong passphrase 12345",
        &tokens.access,
        &tokens.refresh,
        &access2,
        &refresh2,
        SECRET,
    ];
    assert_no_secrets(lines.iter(), &secrets, &tokens.access);
}

async fn sigterm_lets_the_request_in_flight_finish(backend: Backend) {
    let dep = Deployment::new(backend).await;
    // Slow hashing so a login is surely in flight when the signal arrives.
    let mut process = Process::start(
        &dep,
        &[
            ("ARGON2_ITERATIONS", "100"),
            ("SHUTDOWN_GRACE_SECONDS", "20"),
        ],
    )
    .await;
    let app = process.app();
    assert_eq!(
        app.register("inflight@example.com", PASSWORD).await.status,
        StatusCode::CREATED
    );
    let started = Instant::now();
    let login = async {
        let reply = app.login_reply("inflight@example.com", PASSWORD).await;
        (reply, started.elapsed())
    };
    let signal = async {
        actix_web::rt::time::sleep(Duration::from_millis(150)).await;
        process.sigterm();
    };
    let ((reply, took), ()) = tokio::join!(login, signal);
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the login in flight completed: {}",
        reply.body
    );
    assert!(
        took > Duration::from_millis(200),
        "the login was in flight at SIGTERM ({took:?})"
    );
    assert_eq!(
        process.wait(Duration::from_secs(25)).await,
        Some(0),
        "exit code 0"
    );
    assert!(
        app.client.get(app.url("/health")).send().await.is_err(),
        "no longer accepting connections"
    );
    assert!(process
        .output()
        .iter()
        .any(|l| l.contains("shutdown signal received")));
}

#[test]
fn check_config_masks_secrets_and_bad_values_name_the_variable() {
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        cmd.env_clear().arg("check-config");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().expect("binary runs")
    };
    let out = run(&[
        ("DB_URL", "postgres://app:db-password-123@db:5432/sessiond"),
        ("REDIS_URL", "redis://:redis-password-456@cache:6379"),
        ("JWT_SECRET", SECRET),
        ("SESSION_CACHE_TTL", "7"),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SESSION_CACHE_TTL=7"), "{text}");
    assert!(
        text.contains("postgres://app:***@db:5432/sessiond"),
        "{text}"
    );
    for secret in ["db-password-123", "redis-password-456", SECRET] {
        assert!(!text.contains(secret), "{text}");
    }
    let bad = run(&[("PORT", "eighty")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("PORT"));
    let help = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .arg("--help")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for sub in ["serve", "migrate", "check-config"] {
        assert!(help.contains(sub), "{help}");
    }
}

/// Runs `sessiond ARGS` with the deployment's settings and `input` on stdin; waits for the exit.
fn cli(dep: &Deployment, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env_clear()
        .envs(dep.vars())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    if let Some(mut stdin) = child.stdin.take() {
        // A refused command line may exit before reading: a broken pipe is expected then.
        let _ = stdin.write_all(input.as_bytes());
    }
    child.wait_with_output().expect("binary exits")
}

#[track_caller]
fn assert_refused(out: &std::process::Output, what: &str) {
    assert!(!out.status.success(), "{what}: exit {:?}", out.status);
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "{what}: a message on stderr"
    );
}

async fn user_create_cli_reads_the_password_from_stdin_and_grants_roles(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let password = "correct horse battery staple 42";
    let line = format!("{password}\n");
    let email = |kind: &str| format!("cli-{kind}-{}@example.com", uuid::Uuid::new_v4().simple());
    let migrated = cli(&dep, &["migrate"], "");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    let admin = email("admin");
    let out = cli(
        &dep,
        &[
            "user",
            "create",
            "--email",
            &admin,
            "--name",
            "Cli Admin",
            "--role",
            "admin",
        ],
        &line,
    );
    assert!(
        out.status.success(),
        "user create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let printed: Vec<uuid::Uuid> = stdout
        .split_whitespace()
        .filter_map(|w| uuid::Uuid::parse_str(w).ok())
        .collect();
    assert_eq!(printed.len(), 1, "prints the new user's id: {stdout}");
    let id = printed[0].to_string();
    let plain = email("plain");
    let out = cli(&dep, &["user", "create", "--email", &plain], &line);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused: an existing email, an unknown role, a weak password, a password in argv.
    assert_refused(
        &cli(&dep, &["user", "create", "--email", &admin], &line),
        "existing email",
    );
    let unknown_role = email("role");
    assert_refused(
        &cli(
            &dep,
            &[
                "user",
                "create",
                "--email",
                &unknown_role,
                "--role",
                "no-such-role",
            ],
            &line,
        ),
        "unknown role",
    );
    let weak = email("weak");
    assert_refused(
        &cli(&dep, &["user", "create", "--email", &weak], "password\n"),
        "weak password",
    );
    let in_argv = email("argv");
    assert_refused(
        &cli(
            &dep,
            &[
                "user",
                "create",
                "--email",
                &in_argv,
                "--password",
                password,
            ],
            &line,
        ),
        "password as an argument",
    );

    let app = dep.spawn().await;
    // The trailing newline was not part of the password.
    let tokens = app.login(&admin, password).await;
    let session = app.get("/session", Some(&tokens.access)).await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    assert_eq!(session.body["user_id"], id.as_str());
    assert_eq!(session.body["roles"], json!(["admin", "user"]));
    assert_eq!(session.body["permissions"], json!(ADMIN_PERMISSIONS));
    let profile = app.get("/profile", Some(&tokens.access)).await;
    assert_eq!(profile.body["name"], "Cli Admin", "{}", profile.body);
    assert_eq!(profile.body["email"], admin.as_str());
    let r = app.get("/admin/users", Some(&tokens.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let others = app.login(&plain, password).await;
    let session = app.get("/session", Some(&others.access)).await;
    assert_eq!(session.body["roles"], json!(["user"]), "{}", session.body);
    assert_eq!(session.body["permissions"], json!([]), "{}", session.body);
    for refused in [&unknown_role, &weak, &in_argv] {
        app.login_reply(refused, password)
            .await
            .assert_error(401, "invalid_credentials");
    }
    let r = app.get("/admin/users", Some(&tokens.access)).await;
    assert_eq!(
        r.body["total"], 2,
        "only two accounts were created: {}",
        r.body
    );

    let events = settled(
        &app,
        &tokens.access,
        &format!("user_id={id}&type=user_create"),
        1,
    )
    .await;
    assert_event(&events[0], "user_create", None, Some(&id), "success");
}

/// A pod started before the migration job (or an old schema during a rollout) must not look
/// healthy: /ready is 503 naming the pending migrations, the start-up log says so, and the same
/// process serves once `sessiond migrate` has run. A schema newer than the binary is reported
/// (200: old pods keep serving during a rollout) in /ready and at start.
async fn a_pod_before_the_migrations_is_not_ready_then_serves_without_restart(backend: Backend) {
    use migration::MigratorTrait;
    let mut dep = Deployment::new(backend).await;
    dep.set("MIGRATE_ON_START", "false");
    let known: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect();

    let process = Process::start(&dep, &[]).await;
    let app = process.app();
    let ready = app.get("/ready", None).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert_eq!(ready.body["status"], "unavailable");
    assert_eq!(ready.body["checks"]["database"], "ok");
    assert_eq!(ready.body["checks"]["schema"], "behind");
    assert_eq!(ready.body["pending_migrations"], json!(known));
    assert!(ready.body["reason"]
        .as_str()
        .is_some_and(|r| r.contains("sessiond migrate")));
    let logged = |output: &[String], message: &str, field: &str, names: &[String]| {
        output.iter().any(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|v| {
                v["message"].as_str().is_some_and(|m| m.contains(message))
                    && names
                        .iter()
                        .all(|n| v[field].as_str().is_some_and(|f| f.contains(n.as_str())))
            })
        })
    };
    assert!(
        logged(&process.output(), "schema is behind", "pending", &known),
        "the start-up log names the pending migrations: {:?}",
        process.output()
    );

    let migrated = cli(&dep, &["migrate"], "");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let ready_now = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || app.get("/ready", None).await.status == StatusCode::OK,
    )
    .await;
    assert!(ready_now, "ready once migrated, without a restart");
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.body["checks"]["schema"], "current");
    assert!(ready.body.get("pending_migrations").is_none());
    let email = format!("early-{}@example.com", uuid::Uuid::new_v4().simple());
    assert_eq!(
        app.register(&email, PASSWORD).await.status,
        StatusCode::CREATED
    );
    app.login(&email, PASSWORD).await;

    // A newer release migrated the database: still ready, and said in /ready and at start.
    let future = "m20991231_000001_from_a_newer_release".to_string();
    let db = sea_orm::Database::connect(dep.database_url())
        .await
        .expect("connect to the deployment's database");
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('{future}', 0)"
    ))
    .await
    .expect("record a migration this binary does not know");
    let _ = db.close().await;
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["checks"]["schema"], "ahead");
    assert_eq!(ready.body["unknown_migrations"], json!([future.clone()]));
    drop(process);
    let newer = Process::start(&dep, &[]).await;
    assert!(
        logged(&newer.output(), "schema is ahead", "unknown", &[future]),
        "the start-up log names the unknown migrations: {:?}",
        newer.output()
    );
}
