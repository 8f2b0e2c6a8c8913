//! Redis as production runs it, on real servers started here from Debian's packages (ports
//! chosen free on 127.0.0.1, temporary directories, killed on drop): a TLS-only redis-server
//! with a CA and certificates made at test time, a master with one replica (WAIT), and the same
//! watched by three sentinels (failover). Both pods run in this process, as in cross_pod.
use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use uuid::Uuid;

use crate::{services_only, support::failover::Stream, support::*};

services_only!(
    tls_pods_share_logout_refresh_throttling_and_roles,
    mutual_tls_pods_share_logout_refresh_throttling_and_roles,
    acl_user_in_the_url_works_and_its_password_is_never_shown,
    wrong_redis_settings_stop_the_binary_naming_the_variable_and_cause,
    revocations_wait_for_the_replica_and_answer_503_without_it,
    sentinel_pods_share_logout_refresh_throttling_and_roles,
    tls_sentinel_pods_share_the_flows_and_follow_a_failover,
    tls_cluster_pods_share_logout_refresh_throttling_and_roles,
    sentinel_failover_keeps_every_acknowledged_logout,
    a_master_turned_replica_answers_readonly_and_the_pods_follow_the_sentinels,
);

const CACHE_TTL: u64 = 2;
const MASTER: &str = "sessiond";

// Servers.

/// A port that was free a moment ago (the servers bind it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A directory of its own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(kind: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sessiond-{kind}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write file");
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One redis-server (or sentinel) process, killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    _dir: TempDir,
}

impl Server {
    /// `redis-server` on `port` with `args` (a config file first when there is one).
    fn start(port: u16, args: Vec<String>, dir: TempDir) -> Self {
        let mut server = Self {
            child: None,
            port,
            args,
            _dir: dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self._dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (install the redis-server package)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no goodbye to replicas or clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

/// `redis-server` with its data in memory only.
fn plain_args(port: u16, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(extra);
    args
}

fn redis_node(extra: &[String]) -> Server {
    let port = free_port();
    Server::start(port, plain_args(port, extra), TempDir::new("redis"))
}

fn replica_of(port: u16) -> Vec<String> {
    vec!["--replicaof".into(), "127.0.0.1".into(), port.to_string()]
}

/// A master and one replica in sync.
async fn master_and_replica() -> (Server, Server) {
    let master = redis_node(&[]);
    let replica = redis_node(&replica_of(master.port));
    wait_for_replication(master.port, 1).await;
    (master, replica)
}

/// A CA and certificates for 127.0.0.1, made now.
struct Pki {
    dir: TempDir,
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    /// A CA that signed none of these.
    other_ca: String,
}

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (params, key)
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new("pki");
        let (params, key) = ca("sessiond test CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA");
        let leaf = |usage: rcgen::ExtendedKeyUsagePurpose| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params =
                rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
                    .expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        let (other, other_key) = ca("another CA");
        let other = other.self_signed(&other_key).expect("other CA");
        Self {
            ca: dir.file("ca.crt", &issuer.pem()),
            server_cert: dir.file("server.crt", &server_cert),
            server_key: dir.file("server.key", &server_key),
            client_cert: dir.file("client.crt", &client_cert),
            client_key: dir.file("client.key", &client_key),
            other_ca: dir.file("other-ca.crt", &other.pem()),
            dir,
        }
    }

    /// A redis-server that speaks only TLS; `auth_clients`: `yes` (mutual TLS) or `no`.
    fn tls_server(&self, auth_clients: &str, extra: &[String]) -> Server {
        let port = free_port();
        Server::start(
            port,
            self.tls_args(port, auth_clients, extra),
            TempDir::new("redis-tls"),
        )
    }

    /// The arguments of [`tls_server`](Self::tls_server).
    fn tls_args(&self, port: u16, auth_clients: &str, extra: &[String]) -> Vec<String> {
        let mut tls: Vec<String> = [
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &self.server_cert,
            "--tls-key-file",
            &self.server_key,
            "--tls-ca-cert-file",
            &self.ca,
            "--tls-auth-clients",
            auth_clients,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        tls.extend_from_slice(extra);
        // Port 0: no plain-text listener at all.
        plain_args(0, &tls)
    }

    /// What a node of a TLS-only replicated topology adds: replication over TLS, with the
    /// client certificate for its own outgoing connections.
    fn replication_args(&self) -> Vec<String> {
        [
            "--tls-replication",
            "yes",
            "--tls-client-cert-file",
            &self.client_cert,
            "--tls-client-key-file",
            &self.client_key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn cluster(&self) -> ClusterTls {
        ClusterTls {
            ca: self.ca.clone(),
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// A master, one replica, and three sentinels watching them under [`MASTER`].
struct SentinelTopology {
    master: Server,
    replica: Server,
    sentinels: Vec<Server>,
    /// TLS only (clients, replication, sentinels): the CA file clients trust.
    ca: Option<String>,
}

impl SentinelTopology {
    async fn start() -> Self {
        let (master, replica) = master_and_replica().await;
        Self::watch(master, replica, None)
    }

    /// Everything speaks only TLS: the nodes, their replication, the sentinels and their links
    /// to the nodes and to each other.
    async fn start_tls(pki: &Pki) -> Self {
        let master = pki.tls_server("no", &pki.replication_args());
        let mut replica_args = pki.replication_args();
        replica_args.extend(replica_of(master.port));
        let replica = pki.tls_server("no", &replica_args);
        wait_for_replication_on(Some(&pki.ca), master.port, 1).await;
        let tls = format!(
            "port 0\ntls-port {{port}}\ntls-cert-file {}\ntls-key-file {}\n\
             tls-client-cert-file {}\ntls-client-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients no\ntls-replication yes\n",
            pki.server_cert, pki.server_key, pki.client_cert, pki.client_key, pki.ca
        );
        Self::watch(master, replica, Some((tls, pki.ca.clone())))
    }

    /// Three sentinels on `master`; `tls`: their listener settings (`{port}` is replaced) and
    /// the CA.
    fn watch(master: Server, replica: Server, tls: Option<(String, String)>) -> Self {
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let dir = TempDir::new("sentinel");
                let listen = match &tls {
                    Some((settings, _)) => settings.replace("{port}", &port.to_string()),
                    None => format!("port {port}\n"),
                };
                let conf = dir.file(
                    "sentinel.conf",
                    &format!(
                        "{listen}bind 127.0.0.1\nsentinel resolve-hostnames no\n\
                         sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {MASTER} 1000\n\
                         sentinel failover-timeout {MASTER} 4000\n\
                         sentinel parallel-syncs {MASTER} 1\n",
                        master.port
                    ),
                );
                Server::start(port, vec![conf, "--sentinel".into()], dir)
            })
            .collect();
        Self {
            master,
            replica,
            sentinels,
            ca: tls.map(|(_, ca)| ca),
        }
    }

    fn urls(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        self.sentinels
            .iter()
            .map(|s| format!("{scheme}://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Once every sentinel names a master other than the one on `old_port`: its port.
    async fn new_master(&self, old_port: u16) -> u16 {
        let mut new_port = None;
        let moved = eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            async || {
                new_port = self.master_port().filter(|p| *p != old_port);
                new_port.is_some()
            },
        )
        .await;
        assert!(moved, "the sentinels never agreed on a new master");
        new_port.expect("new master")
    }

    /// Until the master the sentinels agree on has a replica in sync again. Usually the one
    /// promoted by the failover; on a loaded machine the sentinels may have judged it down for
    /// `down-after-milliseconds` and failed over once more, to the node that came back, and
    /// what a failover must keep holds across both.
    async fn replicated_again(&self) {
        let mut info = String::new();
        let online = eventually(
            Duration::from_secs(40),
            Duration::from_millis(50),
            async || {
                let Some(port) = self.master_port() else {
                    return false;
                };
                info =
                    query(self.ca.as_deref(), port, &["INFO", "replication"]).unwrap_or_default();
                info.contains("role:master") && online_replicas(&info) >= 1
            },
        )
        .await;
        assert!(online, "the master never had its replica back: {info}");
    }

    /// The master's port, once every sentinel names the same one.
    fn master_port(&self) -> Option<u16> {
        let ports: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|s| {
                let addr: Vec<String> = query(
                    self.ca.as_deref(),
                    s.port,
                    &["SENTINEL", "get-master-addr-by-name", MASTER],
                )?;
                addr.get(1)?.parse().ok()
            })
            .collect();
        ports.iter().all(|p| *p == ports[0]).then_some(ports[0])?
    }
}

/// A command against a plain node, on a short-lived connection of its own.
fn redis_cli_query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Option<T> {
    query(None, port, args)
}

/// A command on a short-lived connection of its own: plain, or TLS trusting the CA file `ca`.
fn query<T: redis::FromRedisValue>(ca: Option<&str>, port: u16, args: &[&str]) -> Option<T> {
    let client = node_client(port, ca).ok()?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut con).ok()
}

/// Until the master at `port` has `replicas` replicas in sync. Polls without blocking the
/// thread: the pods' actors run on it.
async fn wait_for_replication(port: u16, replicas: usize) {
    wait_for_replication_on(None, port, replicas).await
}

/// [`wait_for_replication`] on a plain node, or a TLS one trusting the CA file `ca`.
async fn wait_for_replication_on(ca: Option<&str>, port: u16, replicas: usize) {
    let mut info = String::new();
    let online = eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        async || {
            info = query(ca, port, &["INFO", "replication"]).unwrap_or_default();
            online_replicas(&info) >= replicas
        },
    )
    .await;
    assert!(online, "replication to port {port} never came up: {info}");
}

/// The replicas in sync that a master's `INFO replication` lists.
fn online_replicas(info: &str) -> usize {
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count()
}

// Deployments on these servers.

/// A Services deployment with its Redis settings replaced by `redis`.
async fn deployment(redis: &[(&str, String)]) -> Deployment {
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("REDIS_URL", "")
        .set("SESSION_CACHE_TTL", CACHE_TTL)
        .set("REFRESH_REUSE_GRACE", 0)
        .set("RATE_LIMIT_LOGIN_PER_ACCOUNT", 3)
        .set("LOCKOUT_THRESHOLD", 0)
        .set("REDIS_TIMEOUT_MS", 1000);
    for (k, v) in redis {
        dep.set(k, v);
    }
    dep
}

/// Cross-pod logout, refresh rotation with reuse detection, throttling and a role change, with
/// pod A and pod B of `dep` (returned, for more).
async fn shared_flows(dep: &mut Deployment) -> (TestApp, TestApp) {
    let admin_email = unique_email("admin");
    dep.set("ADMIN_EMAILS", &admin_email);
    let a = dep.spawn().await;
    let b = dep.spawn().await;
    let eventually_on_b = async |token: &str, path: &str, want: StatusCode| {
        eventually(
            Duration::from_secs(CACHE_TTL + 5),
            Duration::from_millis(20),
            async || b.get(path, Some(token)).await.status == want,
        )
        .await
    };

    // Cross-pod logout.
    let (_, tokens) = a.user().await;
    assert_eq!(
        b.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    let r = a.post_auth("/logout", &tokens.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(
        eventually_on_b(&tokens.access, "/session", StatusCode::UNAUTHORIZED).await,
        "B still accepts a token logged out on A"
    );

    // Refresh rotation, then reuse of the rotated token revokes the session on both pods.
    let (_, tokens) = a.user().await;
    let r = refresh(&b, &tokens.refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let access2 = r.body["access_token"].as_str().expect("access").to_string();
    assert_eq!(
        a.get("/session", Some(&access2)).await.status,
        StatusCode::OK
    );
    // Past the reuse grace (0 s, counted in whole seconds).
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    refresh(&a, &tokens.refresh)
        .await
        .assert_error(401, "unauthorized");
    a.get("/session", Some(&access2))
        .await
        .assert_error(401, "unauthorized");
    assert!(
        eventually_on_b(&access2, "/session", StatusCode::UNAUTHORIZED).await,
        "reuse did not revoke the session on B"
    );

    // Throttling: the per-account budget is shared by both pods.
    let victim = unique_email("victim");
    assert_eq!(
        a.register(&victim, PASSWORD).await.status,
        StatusCode::CREATED
    );
    for (i, pod) in [&a, &b, &a].into_iter().enumerate() {
        pod.login_reply(&victim, &format!("wrong password {i}"))
            .await
            .assert_error(401, "invalid_credentials");
    }
    b.login_reply(&victim, PASSWORD)
        .await
        .assert_error(429, "rate_limited");

    // A role change on A reaches the session on B.
    let admin = admin(&a, &admin_email).await;
    let user = plain(&a).await;
    b.get("/admin/users", Some(&user.tokens.access))
        .await
        .assert_error(403, "forbidden");
    let r = set_roles(&a, &admin.tokens.access, &user.id, &["admin", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        eventually_on_b(&user.tokens.access, "/admin/users", StatusCode::OK).await,
        "B never saw the grant"
    );
    let r = set_roles(&a, &admin.tokens.access, &user.id, &["user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        eventually_on_b(&user.tokens.access, "/admin/users", StatusCode::FORBIDDEN).await,
        "B kept a revoked grant"
    );
    (a, b)
}

fn tls_url(server: &Server) -> String {
    format!("rediss://127.0.0.1:{}", server.port)
}

async fn tls_pods_share_logout_refresh_throttling_and_roles() {
    let pki = Pki::new();
    let server = pki.tls_server("no", &[]);
    let mut dep = deployment(&[
        ("REDIS_URL", tls_url(&server)),
        ("REDIS_CA_FILE", pki.ca.clone()),
    ])
    .await;
    shared_flows(&mut dep).await;
}

async fn mutual_tls_pods_share_logout_refresh_throttling_and_roles() {
    let pki = Pki::new();
    let server = pki.tls_server("yes", &[]);
    let mut dep = deployment(&[
        ("REDIS_URL", tls_url(&server)),
        ("REDIS_CA_FILE", pki.ca.clone()),
        ("REDIS_CLIENT_CERT_FILE", pki.client_cert.clone()),
        ("REDIS_CLIENT_KEY_FILE", pki.client_key.clone()),
    ])
    .await;
    shared_flows(&mut dep).await;
}

/// The real binary with `vars` on top of the deployment's: its exit status and stderr.
fn run_binary(dep: &Deployment, vars: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
    cmd.env_clear()
        .envs(dep.vars())
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn acl_user_in_the_url_works_and_its_password_is_never_shown() {
    let pki = Pki::new();
    let password = format!("pw-{}", Uuid::new_v4().simple());
    // An ACL user of its own; the default user is off, so only alice gets in.
    let acl: Vec<String> = [
        "--user",
        "alice",
        "on",
        &format!(">{password}"),
        "~*",
        "&*",
        "+@all",
    ]
    .into_iter()
    .chain(["--user", "default", "off"])
    .map(str::to_string)
    .collect();
    let server = pki.tls_server("no", &acl);
    let url = format!("rediss://alice:{password}@127.0.0.1:{}", server.port);
    let dep = deployment(&[
        ("REDIS_URL", url.clone()),
        ("REDIS_CA_FILE", pki.ca.clone()),
    ])
    .await;
    let a = dep.spawn().await;
    let (_, tokens) = a.user().await;
    assert_eq!(
        a.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );

    let (ok, stdout, stderr) = run_binary(&dep, &[], &["check-config"]);
    assert!(ok, "{stderr}");
    let shown = format!("REDIS_URL=rediss://alice:***@127.0.0.1:{}", server.port);
    assert!(stdout.contains(&shown), "{stdout}");
    assert!(!stdout.contains(&password) && !stderr.contains(&password));

    // The real binary at RUST_LOG=trace through a full flow: the user shows, the password never.
    let logs = TempDir::new("logs");
    let log_path = logs.0.join("sessiond.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env_clear()
        .envs(dep.vars())
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("binary starts");
    let mut port = None;
    let started = eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            port = text.lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"] == "sessiond starting").then(|| v["port"].as_u64())?
            });
            port.is_some()
        },
    )
    .await;
    let text = if started {
        let pod = TestApp::external(&format!("http://127.0.0.1:{}", port.unwrap_or_default()));
        let (_, tokens) = pod.user().await;
        assert_eq!(
            pod.post_auth("/logout", &tokens.access).await.status,
            StatusCode::NO_CONTENT
        );
        let _ = child.kill();
        let _ = child.wait();
        std::fs::read_to_string(&log_path).unwrap_or_default()
    } else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the binary did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    };
    assert!(
        !text.contains(&password),
        "a log line shows the Redis password"
    );
    let shown = format!("rediss://alice:***@127.0.0.1:{}", server.port);
    assert!(
        text.lines()
            .any(|l| l.contains("connected to Redis") && l.contains(&shown)),
        "{text}"
    );

    // A failing start logs the user, never the password.
    let wrong = format!("rediss://alice:{password}x@127.0.0.1:{}", server.port);
    let (ok, stdout, stderr) = run_binary(&dep, &[("REDIS_URL", wrong)], &[]);
    assert!(!ok);
    assert!(
        !stdout.contains(&password) && !stderr.contains(&password),
        "{stdout}{stderr}"
    );
}

async fn wrong_redis_settings_stop_the_binary_naming_the_variable_and_cause() {
    let pki = Pki::new();
    let tls_only = pki.tls_server("no", &[]);
    let mutual = pki.tls_server("yes", &[]);
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let acl = pki.tls_server("no", &["--requirepass".into(), password.clone()]);
    let dep = deployment(&[]).await;
    let port = |s: &Server| s.port;
    let closed = free_port();
    // The settings, and the words the error line must hold.
    type Case<'a> = (Vec<(&'a str, String)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            vec![(
                "REDIS_URL",
                format!("redis://127.0.0.1:{}", port(&tls_only)),
            )],
            &["REDIS_URL", "closed the connection", "rediss://"],
        ),
        (
            vec![
                ("REDIS_URL", tls_url(&tls_only)),
                ("REDIS_CA_FILE", pki.other_ca.clone()),
            ],
            &["REDIS_URL", "certificate verify failed", "REDIS_CA_FILE"],
        ),
        (
            vec![("REDIS_URL", tls_url(&tls_only))],
            &["REDIS_URL", "certificate verify failed", "system"],
        ),
        (
            vec![
                ("REDIS_URL", tls_url(&mutual)),
                ("REDIS_CA_FILE", pki.ca.clone()),
            ],
            &["REDIS_URL", "client certificate"],
        ),
        (
            vec![
                (
                    "REDIS_URL",
                    format!("rediss://:wrong@127.0.0.1:{}", port(&acl)),
                ),
                ("REDIS_CA_FILE", pki.ca.clone()),
            ],
            &["REDIS_URL", "WRONGPASS"],
        ),
        (
            vec![("REDIS_URL", format!("redis://127.0.0.1:{closed}"))],
            &["REDIS_URL", "connection refused"],
        ),
        (
            vec![
                ("REDIS_URL", tls_url(&tls_only)),
                (
                    "REDIS_CA_FILE",
                    pki.dir.file("garbage.crt", "not a certificate"),
                ),
            ],
            &["REDIS_CA_FILE", "no PEM"],
        ),
        (
            vec![
                ("REDIS_URL", tls_url(&tls_only)),
                ("REDIS_CLIENT_CERT_FILE", pki.client_cert.clone()),
            ],
            &["REDIS_CLIENT_KEY_FILE", "required"],
        ),
        (
            vec![("REDIS_SENTINEL_URLS", format!("redis://127.0.0.1:{closed}"))],
            &["REDIS_SENTINEL_MASTER", "required"],
        ),
        (
            vec![
                ("REDIS_URL", format!("redis://127.0.0.1:{closed}")),
                ("REDIS_CLUSTER_URLS", format!("redis://127.0.0.1:{closed}")),
            ],
            &["REDIS_CLUSTER_URLS", "exactly one"],
        ),
    ];
    for (vars, expected) in cases {
        let line = refused_at_start(&dep, &vars, expected);
        assert!(!line.contains(&password));
    }
}

/// The real binary with `vars` stops at start with one error line holding every word of
/// `expected`, soon; the line.
fn refused_at_start(dep: &Deployment, vars: &[(&str, String)], expected: &[&str]) -> String {
    let started = Instant::now();
    let (ok, _, stderr) = run_binary(dep, vars, &[]);
    assert!(!ok, "{vars:?} started");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("sessiond: "))
        .unwrap_or_else(|| panic!("no error line for {vars:?}: {stderr}"))
        .to_string();
    eprintln!("{line}");
    for word in expected {
        assert!(line.contains(word), "{vars:?}: {line:?} lacks {word:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{vars:?} took too long"
    );
    line
}

async fn revocations_wait_for_the_replica_and_answer_503_without_it() {
    let (master, replica) = master_and_replica().await;
    let dep = deployment(&[
        ("REDIS_URL", format!("redis://127.0.0.1:{}", master.port)),
        ("REDIS_WAIT_REPLICAS", "1".into()),
        ("REDIS_WAIT_TIMEOUT_MS", "300".into()),
        ("MAX_SESSIONS_PER_USER", "2".into()),
    ])
    .await;
    let a = dep.spawn().await;
    let (_, first) = a.user().await;
    let (_, second) = a.user().await;
    let r = a.post_auth("/logout", &first.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // A user at the session limit: the next login ends the oldest session, a revocation too.
    let (busy, oldest) = a.user().await;
    let kept = a.login(&busy, PASSWORD).await;
    assert_eq!(
        a.metric(r#"sessiond_redis_wait_total{outcome="ok"}"#).await,
        1.0
    );

    // The replica stops acknowledging: a revocation cannot be confirmed, so it is not.
    replica.signal("STOP");
    let started = Instant::now();
    let r = a.post_auth("/logout", &second.access).await;
    r.assert_error(503, "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "WAIT was not bounded"
    );
    let r = refresh(&a, &second.refresh).await;
    r.assert_error(503, "unavailable");
    // Logins and token checks do not wait for replicas: they keep working meanwhile.
    let (_, third) = a.user().await;
    assert_eq!(
        a.get("/session", Some(&third.access)).await.status,
        StatusCode::OK
    );
    a.post_auth("/logout/all", &third.access)
        .await
        .assert_error(503, "unavailable");
    // A login that would end the oldest session cannot have that confirmed: 503, no session
    // handed out (the one it stored is deleted again).
    let short = r#"sessiond_redis_wait_total{outcome="short"}"#;
    let before = a.metric(short).await;
    assert!(before >= 2.0, "the logouts above fell short: {before}");
    a.login_reply(&busy, PASSWORD)
        .await
        .assert_error(503, "unavailable");
    assert_eq!(a.metric(short).await, before + 1.0);
    replica.signal("CONT");
    wait_for_replication(master.port, 1).await;
    // Back to normal: a login at the limit ends the oldest session once the replica has it;
    // the failed login left no session behind, so the other one is still within the limit.
    let newest = a.login(&busy, PASSWORD).await;
    for (tokens, want) in [
        (&oldest, StatusCode::UNAUTHORIZED),
        (&kept, StatusCode::OK),
        (&newest, StatusCode::OK),
    ] {
        assert_eq!(a.get("/session", Some(&tokens.access)).await.status, want);
    }
    // Retried once the replica is back: acknowledged (the session was already gone).
    let retried = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let s = a.post_auth("/logout", &second.access).await.status;
            s == StatusCode::NO_CONTENT || s == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    assert!(retried);
    a.get("/session", Some(&second.access))
        .await
        .assert_error(401, "unauthorized");
}

async fn sentinel_pods_share_logout_refresh_throttling_and_roles() {
    let topology = SentinelTopology::start().await;
    let mut dep = deployment(&[
        ("REDIS_SENTINEL_URLS", topology.urls()),
        ("REDIS_SENTINEL_MASTER", MASTER.into()),
    ])
    .await;
    shared_flows(&mut dep).await;
}

async fn sentinel_failover_keeps_every_acknowledged_logout() {
    let mut topology = SentinelTopology::start().await;
    let dep = deployment(&[
        ("REDIS_SENTINEL_URLS", topology.urls()),
        ("REDIS_SENTINEL_MASTER", MASTER.into()),
        ("REDIS_WAIT_TIMEOUT_MS", "500".into()),
        ("REDIS_TIMEOUT_MS", "500".into()),
        ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "1000000".into()),
    ])
    .await;
    let a = dep.spawn().await;
    let b = dep.spawn().await;
    stream_through_the_failover(&mut topology, &a, &b, plain_args).await;
    // Both pods re-subscribed to invalidations, on the new master.
    for pod in [&a, &b] {
        assert!(pod.metric("sessiond_pubsub_resubscriptions_total").await >= 1.0);
    }
    // And the pods work on the new master.
    let (_, tokens) = a.user().await;
    assert_eq!(
        b.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    let r = b.post_auth("/logout", &tokens.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

/// A steady stream of logins, token checks and logouts on pods `a` and `b` while the master
/// dies; `node_args(port, extra)`: the arguments the old master comes back with (as a replica
/// of the new one, so WAIT can be satisfied again). Asserts what [`Stream`] promises.
async fn stream_through_the_failover(
    topology: &mut SentinelTopology,
    a: &TestApp,
    b: &TestApp,
    node_args: impl Fn(u16, &[String]) -> Vec<String>,
) {
    let email = unique_email("stream");
    assert_eq!(
        a.register(&email, PASSWORD).await.status,
        StatusCode::CREATED
    );
    let stream = Stream::default();
    let chaos = async {
        // Steady traffic, then the master dies.
        actix_web::rt::time::sleep(Duration::from_secs(2)).await;
        let old_port = topology.master.port;
        let killed_at = Instant::now();
        topology.master.kill();
        let new_port = topology.new_master(old_port).await;
        assert_eq!(new_port, topology.replica.port);
        topology.master.args = node_args(old_port, &replica_of(new_port));
        topology.master.spawn();
        topology.replicated_again().await;
        let recovered_at = Instant::now();
        stream.stop_once_healthy(recovered_at).await;
        (killed_at, recovered_at)
    };
    let (_, (killed_at, recovered_at)) = tokio::join!(stream.run(a, b, &email), chaos);
    stream.assert_answers(killed_at, recovered_at, Duration::from_secs(5));
    stream
        .assert_logouts_hold(&[a, b], Duration::from_secs(CACHE_TTL))
        .await;
}

/// A manual failover leaves the old master running as a replica: the pods' connections stay up
/// and their writes get READONLY, which must make them ask the sentinels again.
async fn a_master_turned_replica_answers_readonly_and_the_pods_follow_the_sentinels() {
    let topology = SentinelTopology::start().await;
    let dep = deployment(&[
        ("REDIS_SENTINEL_URLS", topology.urls()),
        ("REDIS_SENTINEL_MASTER", MASTER.into()),
    ])
    .await;
    let a = dep.spawn().await;
    let b = dep.spawn().await;
    let (_, before) = a.user().await;
    let old_port = topology.master.port;
    let _: String = redis_cli_query(
        topology.sentinels[0].port,
        &["SENTINEL", "FAILOVER", MASTER],
    )
    .expect("SENTINEL FAILOVER");
    topology.new_master(old_port).await;
    // The sentinels turn the old master, still running, into a replica of the new one.
    let demoted = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let role: Option<Vec<redis::Value>> = redis_cli_query(old_port, &["ROLE"]);
            role.and_then(|r| r.first().cloned())
                == Some(redis::Value::BulkString(b"slave".to_vec()))
        },
    )
    .await;
    assert!(demoted, "the old master was never turned into a replica");
    topology.replicated_again().await;
    // Writes through both pods succeed again (503 until they follow, never 500).
    for pod in [&a, &b] {
        let mut last = StatusCode::OK;
        let followed = eventually(
            Duration::from_secs(15),
            Duration::from_millis(100),
            async || {
                let email = unique_email("after");
                let r = pod.register(&email, PASSWORD).await;
                assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
                if r.status != StatusCode::CREATED {
                    return false;
                }
                let r = pod.login_reply(&email, PASSWORD).await;
                assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
                let Some(access) = r.body["access_token"].as_str() else {
                    return false;
                };
                last = pod.post_auth("/logout", access).await.status;
                assert_ne!(last, StatusCode::INTERNAL_SERVER_ERROR);
                last == StatusCode::NO_CONTENT
            },
        )
        .await;
        assert!(followed, "a pod kept writing to the old master ({last})");
    }
    // The session made before the switch was replicated and still works, and ends on both pods.
    assert_eq!(
        b.get("/session", Some(&before.access)).await.status,
        StatusCode::OK
    );
    let r = b.post_auth("/logout", &before.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    a.get("/session", Some(&before.access))
        .await
        .assert_error(401, "unauthorized");
}

/// Sentinel with TLS everywhere (nodes, replication, sentinels): the shared flows, then the
/// master dies under a steady stream and every pod follows the sentinels to the replica, over
/// TLS too.
async fn tls_sentinel_pods_share_the_flows_and_follow_a_failover() {
    let pki = Pki::new();
    let mut topology = SentinelTopology::start_tls(&pki).await;
    let mut dep = deployment(&[
        ("REDIS_SENTINEL_URLS", topology.urls()),
        ("REDIS_SENTINEL_MASTER", MASTER.into()),
        ("REDIS_CA_FILE", pki.ca.clone()),
    ])
    .await;
    // Wrong TLS settings stop the start, naming the variable and the cause.
    let plain = topology.urls().replace("rediss://", "redis://");
    refused_at_start(
        &dep,
        &[
            ("REDIS_SENTINEL_URLS", plain),
            ("REDIS_CA_FILE", String::new()),
        ],
        &["REDIS_SENTINEL_URLS", "needs rediss://"],
    );
    refused_at_start(
        &dep,
        &[("REDIS_CA_FILE", pki.other_ca.clone())],
        &[
            "REDIS_SENTINEL_URLS",
            "certificate verify failed",
            "REDIS_CA_FILE",
        ],
    );
    let (a, b) = shared_flows(&mut dep).await;

    // The master dies during a steady stream on two more pods (the flows' pods keep their tight
    // login budget); the old master comes back as a replica, over TLS.
    let (_, before) = a.user().await;
    let wide = [("RATE_LIMIT_LOGIN_PER_ACCOUNT", "1000000".to_string())];
    let c = dep.spawn_with(&wide).await;
    let d = dep.spawn_with(&wide).await;
    stream_through_the_failover(&mut topology, &c, &d, |port, extra| {
        let mut args = pki.replication_args();
        args.extend_from_slice(extra);
        pki.tls_args(port, "no", &args)
    })
    .await;
    // The first pods log in, check and log out on the new master too (503 until they follow,
    // never 500).
    for (first, second) in [(&a, &b), (&b, &a)] {
        let mut last = StatusCode::OK;
        let followed = eventually(
            Duration::from_secs(15),
            Duration::from_millis(100),
            async || {
                let email = unique_email("after");
                let r = first.register(&email, PASSWORD).await;
                assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
                let r = first.login_reply(&email, PASSWORD).await;
                assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
                let Some(access) = r.body["access_token"].as_str() else {
                    return false;
                };
                if second.get("/session", Some(access)).await.status != StatusCode::OK {
                    return false;
                }
                last = first.post_auth("/logout", access).await.status;
                assert_ne!(last, StatusCode::INTERNAL_SERVER_ERROR);
                last == StatusCode::NO_CONTENT
            },
        )
        .await;
        assert!(
            followed,
            "a pod did not follow the failover over TLS ({last})"
        );
    }
    // The session made before the failover was replicated over TLS and still ends everywhere.
    let r = b.post_auth("/logout", &before.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    a.get("/session", Some(&before.access))
        .await
        .assert_error(401, "unauthorized");
}

/// A TLS-only Redis Cluster (`tls-cluster yes`, rediss:// seeds): the shared flows on two pods,
/// then a master killed under a steady stream.
async fn tls_cluster_pods_share_logout_refresh_throttling_and_roles() {
    let pki = Pki::new();
    let cluster = RedisCluster::start_tls(pki.cluster()).await;
    let mut dep = deployment(&[
        ("REDIS_CLUSTER_URLS", cluster.urls().join(",")),
        ("REDIS_CA_FILE", pki.ca.clone()),
        ("MAX_SESSIONS_PER_USER", "2".into()),
    ])
    .await;
    // Wrong TLS settings stop the start, naming the variable and the cause.
    let plain: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.replace("rediss://", "redis://"))
        .collect();
    refused_at_start(
        &dep,
        &[
            ("REDIS_CLUSTER_URLS", plain.join(",")),
            ("REDIS_CA_FILE", String::new()),
        ],
        &["REDIS_CLUSTER_URLS", "needs rediss://"],
    );
    refused_at_start(
        &dep,
        &[("REDIS_CA_FILE", pki.other_ca.clone())],
        &[
            "REDIS_CLUSTER_URLS",
            "certificate verify failed",
            "REDIS_CA_FILE",
        ],
    );
    let (a, b) = shared_flows(&mut dep).await;
    // Revocations waited for the shard's replica (the default on a cluster with replicas).
    let ok = r#"sessiond_redis_wait_total{outcome="ok"}"#;
    for pod in [&a, &b] {
        assert!(pod.metric(ok).await >= 1.0);
    }
    // A login beyond the session limit ends the oldest session on both pods, once the master
    // of the user's slot has heard from its replica (WAIT routed to that master).
    let (email, oldest) = a.user().await;
    let kept = a.login(&email, PASSWORD).await;
    assert_eq!(
        b.get("/session", Some(&oldest.access)).await.status,
        StatusCode::OK
    );
    let before = a.metric(ok).await;
    let newest = a.login(&email, PASSWORD).await;
    assert_eq!(a.metric(ok).await, before + 1.0);
    a.get("/session", Some(&oldest.access))
        .await
        .assert_error(401, "unauthorized");
    let took = rejected_within(
        &b,
        &oldest.access,
        Instant::now(),
        Duration::from_secs(CACHE_TTL),
    )
    .await;
    assert!(
        took.is_some(),
        "B still accepts the session the login ended"
    );
    for tokens in [&kept, &newest] {
        assert_eq!(
            b.get("/session", Some(&tokens.access)).await.status,
            StatusCode::OK
        );
    }

    // The master of a user's slot dies during a steady stream of that user's logins, checks and
    // logouts on two more pods (without the flows' tight limits).
    let wide = [
        ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "1000000".to_string()),
        ("MAX_SESSIONS_PER_USER", "0".to_string()),
    ];
    let c = dep.spawn_with(&wide).await;
    let d = dep.spawn_with(&wide).await;
    let (email, tokens) = c.user().await;
    let key = sessions_key(&dep, &tokens.access);
    let victim = cluster.master_of(&key).await.expect("a master");
    let stream = Stream::default();
    let chaos = async {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let times = cluster.fail_over(victim, &key).await;
        stream.stop_once_healthy(times.recovered_at).await;
        times
    };
    let (_, times) = tokio::join!(stream.run(&c, &d, &email), chaos);
    stream.assert_answers(times.killed_at, times.recovered_at, Duration::from_secs(2));
    stream
        .assert_logouts_hold(&[&c, &d], Duration::from_secs(CACHE_TTL))
        .await;
}
