//! The Redis deployments the bench measures, started from Debian's `redis-server` on free
//! 127.0.0.1 ports with the same settings (in memory only, no persistence): one node, and a
//! cluster of three masters with one replica each, joined with `redis-cli --cluster create`.
//! Every process is killed and its directory removed on drop, so a panicking run leaves no
//! server behind.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct RedisProcesses {
    dir: PathBuf,
    nodes: Vec<(u16, Child)>,
}

/// A free port whose cluster-bus port (+10000) is free too.
fn free_port(taken: &[u16]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
        let port = l.local_addr().expect("local address").port();
        if port <= 55_535
            && !taken.contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// One node's answer to a command, `None` while it cannot answer.
pub async fn ask(port: u16, command: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()?;
    let mut cmd = redis::cmd(command[0]);
    cmd.arg(&command[1..]);
    let value: redis::Value = cmd.query_async(&mut conn).await.ok()?;
    match value {
        redis::Value::SimpleString(s) => Some(s),
        v => redis::from_redis_value(v).ok(),
    }
}

/// Polls `ready` every 50 ms until it holds; panics with `what` after `limit`.
async fn until(limit: Duration, what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !ready().await {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl RedisProcesses {
    fn spawn(name: &str, count: usize, cluster: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sessiond-topology-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("creating the Redis directory");
        let mut this = Self {
            dir,
            nodes: Vec::new(),
        };
        for _ in 0..count {
            let taken: Vec<u16> = this.ports();
            let port = free_port(&taken);
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", &this.dir.display().to_string()])
                .args(["--logfile", &format!("{port}.log")]);
            if cluster {
                cmd.args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs (apt-get install redis-server)");
            // Pushed at once: a later panic still kills it.
            this.nodes.push((port, child));
        }
        this
    }

    async fn answering(&self) {
        for port in self.ports() {
            let what = format!("redis-server on port {port} answers PING");
            until(Duration::from_secs(10), &what, async || {
                ask(port, &["PING"]).await.is_some()
            })
            .await;
        }
    }

    /// One redis-server.
    pub async fn single() -> Self {
        let this = Self::spawn("single", 1, false);
        this.answering().await;
        this
    }

    /// Three masters, three replicas; returns once every node says `cluster_state:ok` and
    /// every replica's link to its master is up.
    pub async fn cluster() -> Self {
        let this = Self::spawn("cluster", 6, true);
        this.answering().await;
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(this.ports().iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ports = this.ports();
        until(
            Duration::from_secs(30),
            "the cluster settles (cluster_state:ok, replicas in sync)",
            async || {
                for &port in &ports {
                    let info = ask(port, &["CLUSTER", "INFO"]).await.unwrap_or_default();
                    let repl = ask(port, &["INFO", "replication"])
                        .await
                        .unwrap_or_default();
                    let synced =
                        !repl.contains("role:slave") || repl.contains("master_link_status:up");
                    if !info.contains("cluster_state:ok") || !synced {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        this
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Process ids, for CPU accounting on the client thread.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|(_, child)| child.id()).collect()
    }

    /// `redis_version` of the first node.
    pub async fn version(&self) -> String {
        let info = ask(self.ports()[0], &["INFO", "server"])
            .await
            .unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    }
}

/// CPU time of these processes so far, in seconds (from /proc).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .map(|pid| crate::harness::ticks(&format!("/proc/{pid}/stat")))
        .sum();
    ticks as f64 / crate::harness::TICKS_PER_SECOND
}

impl Drop for RedisProcesses {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
