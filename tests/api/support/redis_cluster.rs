//! A Redis Cluster of the test's own, and deployments on it.
use std::{net::SocketAddr, path::PathBuf, sync::Mutex, time::Duration};

use super::*;
use uuid::Uuid;

// A Redis Cluster of this test's own: three masters and three replicas started from Debian's
// redis-server on free 127.0.0.1 ports, joined with `redis-cli --cluster create`. Every process
// is killed (and its directory removed) on drop.

/// How long a cluster node waits before calling a silent peer failed: small, so a failover
/// takes a couple of seconds.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Mutex<Vec<(u16, std::process::Child)>>,
    ports: Vec<u16>,
    tls: Option<ClusterTls>,
}

/// A TLS-only cluster (`tls-cluster yes`: clients, replication and the cluster bus): PEM files
/// made by the test. The nodes present `cert` to clients and `client_cert` to each other (the
/// cluster bus always checks the peer's certificate); clients need only trust `ca`.
#[derive(Clone)]
pub struct ClusterTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// A port whose cluster-bus port (+10000) is free too.
fn free_cluster_port(taken: &[u16]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().expect("local addr").port();
        if port <= 55_535
            && !taken.contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// A client of one node: plain, or TLS trusting the PEM CA file `ca`.
pub fn node_client(port: u16, ca: Option<&str>) -> redis::RedisResult<redis::Client> {
    let Some(ca) = ca else {
        return redis::Client::open(format!("redis://127.0.0.1:{port}"));
    };
    // The redis crate builds its rustls configuration with the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root_cert = std::fs::read(ca).map_err(redis::RedisError::from)?;
    redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{port}"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
}

async fn node_conn(
    port: u16,
    ca: Option<&str>,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = node_client(port, ca)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One node's answer to a text command (`CLUSTER INFO`, `CLUSTER NODES`, `INFO replication`).
async fn node_text(port: u16, ca: Option<&str>, command: &[&str]) -> Option<String> {
    let mut con = node_conn(port, ca).await.ok()?;
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut con).await.ok()
}

/// Closes one client connection server-side (`CLIENT KILL ADDR`, as Redis sees its address);
/// returns how many were killed.
pub async fn kill_redis_client(addr: SocketAddr) -> i64 {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ADDR")
        .arg(addr.to_string())
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut con)
        .await
        .expect("CLIENT KILL")
}

/// One cluster node; its `nodes-<port>.conf` in `dir` keeps its identity across a restart.
fn spawn_cluster_node(
    dir: &std::path::Path,
    port: u16,
    tls: Option<&ClusterTls>,
) -> std::process::Child {
    let port = port.to_string();
    let listen: Vec<&str> = match tls {
        None => vec!["--port", &port],
        Some(t) => vec![
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cert-file",
            &t.cert,
            "--tls-key-file",
            &t.key,
            "--tls-client-cert-file",
            &t.client_cert,
            "--tls-client-key-file",
            &t.client_key,
            "--tls-ca-cert-file",
            &t.ca,
            "--tls-auth-clients",
            "no",
        ],
    };
    std::process::Command::new("redis-server")
        .args(listen)
        .args(["--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args([
            "--cluster-node-timeout",
            &CLUSTER_NODE_TIMEOUT_MS.to_string(),
        ])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dir", &dir.display().to_string()])
        .args(["--logfile", &format!("{port}.log")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts (apt-get install redis-server)")
}

impl RedisCluster {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// The same cluster, speaking only TLS.
    pub async fn start_tls(tls: ClusterTls) -> Self {
        Self::start_with(Some(tls)).await
    }

    fn ca(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca.as_str())
    }

    async fn node_conn(&self, port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        node_conn(port, self.ca()).await
    }

    async fn node_text(&self, port: u16, command: &[&str]) -> Option<String> {
        node_text(port, self.ca(), command).await
    }

    async fn start_with(tls: Option<ClusterTls>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sessiond-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(free_cluster_port(&ports));
        }
        let mut nodes = Vec::new();
        for &port in &ports {
            let child = spawn_cluster_node(&dir, port, tls.as_ref());
            nodes.push((port, child));
        }
        let cluster = Self {
            dir,
            nodes: Mutex::new(nodes),
            ports,
            tls,
        };
        for &port in &cluster.ports {
            let up = eventually(
                Duration::from_secs(10),
                Duration::from_millis(20),
                async || cluster.node_text(port, &["PING"]).await.is_some(),
            )
            .await;
            assert!(up, "redis-server on {port} answers");
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let tls_args = match &cluster.tls {
            Some(t) => vec!["--tls", "--cacert", t.ca.as_str()],
            None => vec![],
        };
        let out = tokio::process::Command::new("redis-cli")
            .args(tls_args)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            cluster.settled(Duration::from_secs(30)).await,
            "the cluster reached cluster_state:ok with every replica in sync"
        );
        cluster
    }

    /// The URLs of every node, in start order (seeds for REDIS_CLUSTER_URLS).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| match self.tls {
                Some(_) => format!("rediss://127.0.0.1:{p}"),
                None => format!("redis://127.0.0.1:{p}"),
            })
            .collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        let nodes = self.nodes.lock().unwrap();
        nodes.iter().map(|(p, _)| *p).collect()
    }

    /// Every live node says `cluster_state:ok`, sees no failing peer among the live ones, and
    /// every replica's link to its master is up.
    pub async fn settled(&self, deadline: Duration) -> bool {
        let live = self.live_ports();
        eventually(deadline, Duration::from_millis(50), async || {
            for &port in &live {
                let Some(info) = self.node_text(port, &["CLUSTER", "INFO"]).await else {
                    return false;
                };
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let Some(repl) = self.node_text(port, &["INFO", "replication"]).await else {
                    return false;
                };
                if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// The live masters as the first live node sees them: port and slot ranges
    /// (`CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> ... <slot ranges>`).
    async fn master_slots(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let Some(&port) = self.live_ports().first() else {
            return Vec::new();
        };
        let nodes = self
            .node_text(port, &["CLUSTER", "NODES"])
            .await
            .unwrap_or_default();
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let ranges = fields[8..]
                    .iter()
                    .filter_map(|range| {
                        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                        Some((lo.parse().ok()?, hi.parse().ok()?))
                    })
                    .collect();
                let addr = fields[1].split(['@', ',']).next()?;
                Some((addr.rsplit_once(':')?.1.parse().ok()?, ranges))
            })
            .collect()
    }

    /// The port of the live master serving `key`'s slot, as the live nodes see it.
    pub async fn master_of(&self, key: &str) -> Option<u16> {
        let port = *self.live_ports().first()?;
        let mut con = self.node_conn(port).await.ok()?;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut con)
            .await
            .ok()?;
        self.master_slots()
            .await
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot)))
            .map(|(port, _)| port)
    }

    /// The ports of the live masters.
    pub async fn masters(&self) -> Vec<u16> {
        self.master_slots()
            .await
            .into_iter()
            .map(|(port, _)| port)
            .collect()
    }

    /// Moves `key`'s slot, with its keys, to the master on `to`, the way a resharding does:
    /// IMPORTING/MIGRATING, MIGRATE of every key in the slot, then the new owner told to every
    /// master. Clients meet ASK during the move and MOVED after it.
    pub async fn move_slot(&self, key: &str, to: u16) {
        let from = self.master_of(key).await.expect("the slot has a master");
        assert_ne!(from, to, "the slot is already there");
        let (mut src, mut dst) = (
            self.node_conn(from).await.expect("source"),
            self.node_conn(to).await.expect("target"),
        );
        let id = async |con: &mut redis::aio::MultiplexedConnection| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(con)
                .await
                .expect("CLUSTER MYID")
        };
        let (src_id, dst_id) = (id(&mut src).await, id(&mut dst).await);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut src)
            .await
            .expect("CLUSTER KEYSLOT");
        let setslot = |state: &str, node: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(node)
                .to_owned()
        };
        let _: () = setslot("IMPORTING", &src_id)
            .query_async(&mut dst)
            .await
            .expect("IMPORTING");
        let _: () = setslot("MIGRATING", &dst_id)
            .query_async(&mut src)
            .await
            .expect("MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut src)
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut src)
                .await
                .expect("MIGRATE");
        }
        let mut owners = vec![to, from];
        owners.extend(
            self.masters()
                .await
                .into_iter()
                .filter(|p| *p != to && *p != from),
        );
        for port in owners {
            let mut con = self.node_conn(port).await.expect("master");
            let _: () = setslot("NODE", &dst_id)
                .query_async(&mut con)
                .await
                .expect("SETSLOT NODE");
        }
    }

    /// Starts a killed node again: it rejoins the cluster, as a replica of whoever took over.
    pub fn restart(&self, port: u16) {
        let child = spawn_cluster_node(&self.dir, port, self.tls.as_ref());
        self.nodes.lock().unwrap().push((port, child));
    }

    /// Whether the node on `port` has `replicas` replicas online (INFO replication).
    pub async fn has_replicas(&self, port: u16, replicas: usize) -> bool {
        self.node_text(port, &["INFO", "replication"])
            .await
            .is_some_and(|info| {
                info.lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .count()
                    >= replicas
            })
    }

    /// Kills `victim`, the master of `key`'s slot, and waits for a replica to take the slot
    /// over and the cluster to settle; then starts the killed node again, as an operator would,
    /// until it is the new master's replica (revocations on that shard WAIT for one).
    pub async fn fail_over(&self, victim: u16, key: &str) -> FailoverTimes {
        let killed_at = std::time::Instant::now();
        self.kill(victim);
        let over = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || self.master_of(key).await.is_some_and(|p| p != victim),
        )
        .await;
        assert!(over, "a replica took over the slot");
        assert!(
            self.settled(Duration::from_secs(30)).await,
            "cluster_state:ok again"
        );
        let failed_over_at = std::time::Instant::now();
        let new_master = self.master_of(key).await.expect("a new master");
        self.restart(victim);
        let replicated = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || self.has_replicas(new_master, 1).await,
        )
        .await;
        assert!(replicated, "the old master came back as a replica");
        FailoverTimes {
            killed_at,
            failed_over_at,
            recovered_at: std::time::Instant::now(),
        }
    }

    /// A manual failover of `key`'s slot (`CLUSTER FAILOVER` on its master's replica): the
    /// replica takes over with the master's agreement, and the old master stays up as its
    /// replica. Returns the old master's port once the cluster has settled.
    pub async fn manual_failover(&self, key: &str) -> u16 {
        let old = self.master_of(key).await.expect("the slot has a master");
        let nodes = self
            .node_text(old, &["CLUSTER", "NODES"])
            .await
            .expect("CLUSTER NODES");
        let line_of = |port: u16| {
            nodes
                .lines()
                .find(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|a| a.starts_with(&format!("127.0.0.1:{port}@")))
                })
                .map(str::to_string)
        };
        let old_id = line_of(old)
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .expect("the master's id");
        let replica = nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == old_id)
            .and_then(|f| {
                f[1].split('@')
                    .next()?
                    .rsplit_once(':')?
                    .1
                    .parse::<u16>()
                    .ok()
            })
            .expect("the master has a replica");
        let mut con = self.node_conn(replica).await.expect("replica");
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut con)
            .await
            .expect("CLUSTER FAILOVER");
        let over = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || self.master_of(key).await == Some(replica),
        )
        .await;
        assert!(over, "the replica took over the slot");
        assert!(
            self.settled(Duration::from_secs(30)).await,
            "cluster_state:ok again"
        );
        old
    }

    /// SIGKILL: no goodbye to the cluster or the clients.
    pub fn kill(&self, port: u16) {
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(i) = nodes.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = nodes.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// When a master was killed, when the topology had failed over, and when it had a replica
/// again.
pub struct FailoverTimes {
    pub killed_at: std::time::Instant,
    pub failed_over_at: std::time::Instant,
    pub recovered_at: std::time::Instant,
}

/// The key of the index of the sessions of the user `access` belongs to: its slot is the user's.
pub fn sessions_key(dep: &Deployment, access: &str) -> String {
    let uid = claims_of(access)["sub"].as_str().expect("sub").to_string();
    format!("{}{{u:{uid}}}:sessions", dep.prefix)
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if let Ok(mut nodes) = self.nodes.lock() {
            for (_, child) in nodes.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Deployment {
    /// A deployment (fresh database) whose pods keep sessions in `cluster`.
    pub async fn on_cluster(cluster: &RedisCluster) -> Self {
        Self::on_cluster_seeds(&cluster.urls()).await
    }

    /// A deployment whose pods are given these REDIS_CLUSTER_URLS (and no REDIS_URL).
    pub async fn on_cluster_seeds(seeds: &[String]) -> Self {
        let mut dep = Deployment::new(Backend::Services).await;
        dep.vars.remove("REDIS_URL");
        dep.set("REDIS_CLUSTER_URLS", seeds.join(","));
        dep
    }
}
