//! The process's one Redis connection, shared by its two users: the session store and the rate
//! limiter. Here: connecting (one node, or a Redis Cluster), the key prefix (one per
//! deployment), the bound on every call and its metrics, script loading, and where the
//! invalidation subscriber connects. What a failure means is the caller's to say: each user maps
//! [`RedisUnavailable`] into its own error, so a limiter outage is never reported as the session
//! store's.
//!
//! On a cluster, every call carries keys of one hash slot (every key of a user shares the
//! `{u:<uid>}` tag, and every limiter call has one key), so the client library routes it to the
//! slot's master and follows MOVED/ASK redirections, resharding and failovers by itself.
//!
//! (Inside this crate the extern crate is spelled `::redis`, since this module is `redis` too.)
use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use ::redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    Client, Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, RedisResult, Script, Value,
};

use crate::metrics::CallMetrics;

/// Redis did not answer in time, refused, dropped the connection or is failing over: every
/// failure means "retry later"; nothing was half-done (each write is one script or MULTI).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RedisUnavailable(pub String);

impl From<RedisError> for RedisUnavailable {
    fn from(e: RedisError) -> Self {
        RedisUnavailable(e.to_string())
    }
}

/// The shared multiplexed connection: to one node (reconnected by the connection manager), or
/// to a cluster (one connection per node, routed by slot, topology refreshed on MOVED and on
/// errors). Both are cheap to clone.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// Unit tests: records every call, answers from a test's function.
    #[cfg(test)]
    Recording(recording::Recorder),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            #[cfg(test)]
            Conn::Recording(r) => r.command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(test)]
            Conn::Recording(r) => r.pipeline(pipeline, offset),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            #[cfg(test)]
            Conn::Recording(_) => 0,
        }
    }
}

/// A cloneable handle: the multiplexed connection, where pub/sub connects, the deployment's key
/// prefix and the call bound.
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    subscriber: Subscriber,
    prefix: Arc<str>,
    timeout: Duration,
    metrics: CallMetrics,
}

impl Redis {
    /// Connects to one node within a few timeouts; later drops are reconnected by the
    /// connection manager.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        metrics: CallMetrics,
    ) -> Result<Self, RedisUnavailable> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout * 4))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            timeout * 8,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| RedisUnavailable("timed out connecting to Redis".into()))??;
        Ok(Self {
            conn: Conn::Single(conn),
            subscriber: Subscriber::new(vec![client], None),
            prefix: Arc::from(prefix),
            timeout,
            metrics,
        })
    }

    /// Connects to a Redis Cluster through its seed nodes (any reachable one is enough: the
    /// client reads the slot map from it and connects to every master).
    pub async fn connect_cluster(
        urls: &[String],
        prefix: &str,
        timeout: Duration,
        metrics: CallMetrics,
    ) -> Result<Self, RedisUnavailable> {
        let seeds = urls
            .iter()
            .map(|u| Client::open(u.as_str()))
            .collect::<RedisResult<Vec<_>>>()?;
        // Our own bound ([`Redis::bounded`]) cuts every call; the library's retries only
        // matter within it (a MOVED, a reconnection, a slot map refresh after a failover).
        let client = ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(timeout * 4)
            .response_timeout(timeout)
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(timeout.as_millis() as u64)
            .build()?;
        let conn = tokio::time::timeout(timeout * 8, client.get_async_connection())
            .await
            .map_err(|_| RedisUnavailable("timed out connecting to the Redis cluster".into()))??;
        let subscriber = Subscriber::new(seeds, Some(conn.clone()));
        let _ = tokio::time::timeout(timeout * 4, subscriber.discover()).await;
        Ok(Self {
            conn: Conn::Cluster(conn),
            subscriber,
            prefix: Arc::from(prefix),
            timeout,
            metrics,
        })
    }

    /// Where the invalidation subscriber connects (pub/sub cannot share the multiplexed
    /// connection).
    pub fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }

    /// A clone of the shared multiplexed connection.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Every key and channel of this deployment starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One Redis call: bounded by the timeout (a slow Redis gives 503, not a pile-up), timed and
    /// counted by `op`.
    pub async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisUnavailable> {
        let call = async {
            match tokio::time::timeout(self.timeout, fut).await {
                Ok(r) => r.map_err(RedisUnavailable::from),
                Err(_) => Err(RedisUnavailable("Redis call timed out".into())),
            }
        };
        self.metrics.observe(op, call).await
    }

    /// [`bounded`](Self::bounded) with a clone of the shared connection.
    pub async fn call<T>(
        &self,
        op: &'static str,
        run: impl AsyncFnOnce(&mut Conn) -> RedisResult<T>,
    ) -> Result<T, RedisUnavailable> {
        let mut conn = self.conn.clone();
        self.bounded(op, run(&mut conn)).await
    }
}

/// Where the invalidation subscription connects: a dedicated pub/sub connection to one node.
///
/// On a cluster, invalidations use classic PUBLISH, which the cluster broadcasts to every node,
/// so a subscriber connected to any node (master or replica) hears every pod. When that node
/// fails, the subscriber moves to the next node that answers: the seeds, then the nodes the
/// cluster itself listed (refreshed on every reconnection), so one seed is enough.
/// (Sharded pub/sub would keep a message on one shard, but the scripts publish atomically with
/// their writes and SPUBLISH from a script must name a channel of the script's slot: that is a
/// channel per slot, all of them subscribed by every pod on every shard, and re-subscribed
/// whenever a failover moves a shard. The broadcast costs one cluster-bus message per node per
/// revocation, which is small next to the token checks that never publish.)
#[derive(Clone)]
pub struct Subscriber {
    seeds: Arc<[Client]>,
    /// On a cluster: the data connection, to ask for the current nodes.
    cluster: Option<ClusterConnection>,
    /// The nodes the cluster listed last (CLUSTER NODES), with the seeds' settings.
    discovered: Arc<Mutex<Vec<Client>>>,
    /// Where the next attempt starts, so a failed node is not retried first.
    next: Arc<AtomicUsize>,
}

impl Subscriber {
    fn new(seeds: Vec<Client>, cluster: Option<ClusterConnection>) -> Self {
        Self {
            seeds: seeds.into(),
            cluster,
            discovered: Arc::default(),
            next: Arc::default(),
        }
    }

    /// Learns the cluster's nodes through the data connection (best effort: on failure the
    /// previous list stays).
    async fn discover(&self) {
        let (Some(mut conn), Some(seed)) = (self.cluster.clone(), self.seeds.first()) else {
            return;
        };
        let text: RedisResult<String> = ::redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await;
        let Ok(text) = text else { return };
        let nodes: Vec<Client> = cluster_node_addrs(&text)
            .into_iter()
            .filter_map(|(host, port)| {
                let info = seed.get_connection_info().clone();
                let addr = match info.addr() {
                    ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => ConnectionAddr::Tcp(host, port),
                };
                Client::open(info.set_addr(addr)).ok()
            })
            .collect();
        if !nodes.is_empty() {
            if let Ok(mut d) = self.discovered.lock() {
                *d = nodes;
            }
        }
    }

    /// The seeds, then the discovered nodes that are not seeds.
    fn candidates(&self) -> Vec<Client> {
        let mut all = self.seeds.to_vec();
        if let Ok(d) = self.discovered.lock() {
            for node in d.iter() {
                let addr = node.get_connection_info().addr();
                if !all.iter().any(|c| c.get_connection_info().addr() == addr) {
                    all.push(node.clone());
                }
            }
        }
        all
    }

    /// A pub/sub connection to the first node that answers within `limit` each, starting after
    /// the one used last.
    pub async fn connect(&self, limit: Duration) -> Result<PubSub, String> {
        let nodes = self.candidates();
        let start = self.next.load(Ordering::Relaxed);
        let mut last = "no Redis node to subscribe on".to_string();
        for i in 0..nodes.len() {
            let n = (start + i) % nodes.len();
            match tokio::time::timeout(limit, nodes[n].get_async_pubsub()).await {
                Ok(Ok(pubsub)) => {
                    // The next reconnection starts at the following node, from a fresh list.
                    self.next.store(n + 1, Ordering::Relaxed);
                    if self.cluster.is_some() {
                        let this = self.clone();
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(limit, this.discover()).await;
                        });
                    }
                    return Ok(pubsub);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out connecting".to_string(),
            }
        }
        self.next.store(start + 1, Ordering::Relaxed);
        Err(last)
    }
}

/// `host:port` of every node in a CLUSTER NODES reply that is neither failing nor without an
/// address (`<id> <ip:port@cport[,hostname]> <flags> ...`).
fn cluster_node_addrs(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, addr, flags) = (fields.next()?, fields.next()?, fields.next()?);
            if flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"))
            {
                return None;
            }
            let addr = addr.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            (!host.is_empty()).then(|| Some((host.to_string(), port.parse().ok()?)))?
        })
        .collect()
}

/// A Lua script from its parts (a shared prelude, then the body). Sent by hash (EVALSHA) and
/// loaded on a NOSCRIPT reply, so a Redis restart or failover needs nothing from us.
pub fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

/// The Redis Cluster hash slot of a key (CRC16 of its `{tag}` if it has one): what every key of
/// one call must share.
pub fn slot(key: &str) -> ::redis::cluster_routing::Slot {
    ::redis::cluster_routing::Slot::for_key(key)
}

/// A connection that records what the store and the limiter send, to check the slot of every
/// key of every call without a cluster (see [`recording::assert_one_slot_per_call`]).
#[cfg(test)]
pub mod recording {
    use super::*;

    pub type Respond = Arc<dyn Fn(&Cmd) -> Value + Send + Sync>;

    #[derive(Clone)]
    pub struct Recorder {
        /// One entry per request: a command, or a pipeline's commands.
        pub calls: Arc<Mutex<Vec<Vec<Cmd>>>>,
        respond: Respond,
    }

    impl Recorder {
        pub(super) fn command<'a>(&self, cmd: &Cmd) -> RedisFuture<'a, Value> {
            self.calls.lock().unwrap().push(vec![cmd.clone()]);
            let value = (self.respond)(cmd);
            Box::pin(async move { Ok(value) })
        }

        pub(super) fn pipeline<'a>(
            &self,
            pipeline: &Pipeline,
            offset: usize,
        ) -> RedisFuture<'a, Vec<Value>> {
            let cmds: Vec<Cmd> = pipeline.cmd_iter().cloned().collect();
            let values: Vec<Value> = cmds.iter().map(|c| (self.respond)(c)).collect();
            self.calls.lock().unwrap().push(cmds);
            // MULTI/EXEC (offset past the queued replies): one array of every reply.
            let reply = if offset > 0 {
                vec![Value::Array(values)]
            } else {
                values
            };
            Box::pin(async move { Ok(reply) })
        }
    }

    /// A [`Redis`] on a recording connection, and its recorder.
    pub fn redis(prefix: &str, respond: Respond) -> (Redis, Recorder) {
        let recorder = Recorder {
            calls: Arc::default(),
            respond,
        };
        let redis = Redis {
            conn: Conn::Recording(recorder.clone()),
            subscriber: Subscriber::new(Vec::new(), None),
            prefix: Arc::from(prefix),
            timeout: Duration::from_secs(1),
            metrics: crate::metrics::Metrics::new().redis,
        };
        (redis, recorder)
    }

    /// Every argument naming a key of the deployment (it starts with the prefix; `channels`
    /// are not keys) of one call, pipelines included, lies in one hash slot. Scripts build
    /// keys from a key prefix passed in ARGV, so those count too. Returns how many calls
    /// named keys.
    pub fn assert_one_slot_per_call(recorder: &Recorder, prefix: &str, channels: &[&str]) -> usize {
        let calls = recorder.calls.lock().unwrap();
        let mut checked = 0;
        for call in calls.iter() {
            let keys: Vec<String> = call
                .iter()
                .flat_map(|cmd| cmd.args_iter())
                .filter_map(|arg| match arg {
                    ::redis::Arg::Simple(bytes) => {
                        Some(String::from_utf8_lossy(bytes).into_owned())
                    }
                    _ => None,
                })
                .filter(|a| a.starts_with(prefix) && !channels.contains(&a.as_str()))
                .collect();
            let Some(first) = keys.first() else { continue };
            checked += 1;
            for key in &keys {
                assert_eq!(
                    slot(key),
                    slot(first),
                    "{key} and {first} are in one call but not in one slot"
                );
            }
        }
        checked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_parsed_without_failing_ones() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,node-2 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
6ec2 :0@0 master,noaddr - 0 0 0 disconnected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            cluster_node_addrs(text),
            vec![
                ("127.0.0.1".to_string(), 30004),
                ("127.0.0.1".to_string(), 30002),
                ("127.0.0.1".to_string(), 30001),
            ]
        );
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // The reference value from the Redis Cluster specification.
        assert_eq!(slot("123456789"), slot("{123456789}:anything"));
        assert_eq!(
            ::redis::cluster_routing::Slot::new(12739),
            Some(slot("123456789"))
        );
        assert_eq!(slot("a:{u:1}:x"), slot("b:{u:1}:y"));
    }
}
