//! The process's one Redis connection, shared by its two users: the session store and the rate
//! limiter. Here: connecting (one node, a Sentinel-managed master or a Redis Cluster, over TLS
//! when the URLs say rediss://), following a failover, the key prefix (one per deployment), the
//! bound on every call and its metrics, script loading, where the invalidation subscriber
//! connects, and the WAIT that makes a revocation durable. What a failure means is the caller's
//! to say: each user maps [`RedisUnavailable`] into its own error, so a limiter outage is never
//! reported as the session store's.
//!
//! On a cluster, every call carries keys of one hash slot (every key of a user shares the
//! `{u:<uid>}` tag, and every limiter call has one key), so the client library routes it to the
//! slot's master and follows MOVED/ASK redirections, resharding and failovers by itself.
//!
//! (Inside this crate the extern crate is spelled `::redis`, since this module is `redis` too.)
use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use ::redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr},
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
    Client, ClientTlsConfig, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, RedisResult, Script, ServerErrorKind, TlsCertificates,
    TlsMode, ToRedisArgs, Value,
};

use crate::{
    config::redis::{RedisSettings, RedisTls, RedisTopology},
    metrics::RedisMetrics,
};

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

/// Sentinels are asked again at most this often while calls keep failing.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(200);

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

/// A cloneable handle: the multiplexed connection to the current master, the deployment's key
/// prefix and the call bound.
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
    prefix: Arc<str>,
    timeout: Duration,
    metrics: RedisMetrics,
}

struct Shared {
    /// Where the master is found: fixed, or asked of the sentinels.
    sentinel: Option<tokio::sync::Mutex<SentinelClient>>,
    /// On a cluster: which node the invalidation subscriber connects to.
    cluster: Option<Subscriber>,
    current: RwLock<Current>,
    /// Held while the sentinels are asked (one question at a time); when it was last done.
    resolving: tokio::sync::Mutex<Option<Instant>>,
    /// Replicas that must acknowledge a revocation, and how long to wait for them.
    wait_replicas: u32,
    wait_timeout: Duration,
}

/// The master in use; replaced when the sentinels name another.
#[derive(Clone)]
struct Current {
    generation: u64,
    /// The master's (on a cluster: the first seed's) client.
    client: Client,
    conn: Conn,
    /// Revocations that WAIT go here: WAIT blocks the connection it is sent on until the
    /// replicas answer, which must not hold up the token checks on `conn`.
    durable: Conn,
}

impl Current {
    fn addr(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }
}

impl Redis {
    /// Connects within a few timeouts (finding the master through the sentinels first); later
    /// drops are reconnected by the connection manager, and a failover is followed by asking the
    /// sentinels again. The error names the variable and says what is wrong.
    pub async fn connect(
        settings: &RedisSettings,
        prefix: &str,
        metrics: RedisMetrics,
    ) -> Result<Self, RedisUnavailable> {
        let var = settings.topology.var();
        let fail = |e: RedisError| RedisUnavailable(explain(var, &settings.tls, &e));
        if settings.topology.is_tls() {
            // The redis crate builds its rustls configuration with the process-wide provider;
            // ring is the one this binary carries (an error only says one is installed already).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let timeout = settings.timeout;
        let connect_bound = timeout * 8;
        let (sentinel, client) = match &settings.topology {
            RedisTopology::Single { url } => {
                (None, single_client(url, &settings.tls).map_err(fail)?)
            }
            RedisTopology::Sentinel { urls, master } => {
                let mut sentinel = sentinel_client(urls, master, &settings.tls).map_err(fail)?;
                let client = tokio::time::timeout(connect_bound, sentinel.async_get_client())
                    .await
                    .map_err(|_| {
                        RedisUnavailable(format!(
                            "{var}: timed out asking the sentinels for master {master:?}"
                        ))
                    })?
                    .map_err(|e| {
                        RedisUnavailable(format!(
                            "{var}: no sentinel named a reachable master {master:?}: {}",
                            explain_cause(&settings.tls, &e)
                        ))
                    })?;
                (Some(tokio::sync::Mutex::new(sentinel)), client)
            }
            RedisTopology::Cluster { urls } => {
                return Self::connect_cluster(urls, settings, prefix, metrics).await;
            }
        };
        let (conn, durable) = tokio::time::timeout(connect_bound, managers(&client, timeout))
            .await
            .map_err(|_| {
                RedisUnavailable(format!(
                    "{var}: timed out connecting to Redis at {} (unreachable host, or a firewall \
                     dropping packets?)",
                    client.get_connection_info().addr()
                ))
            })?
            .map_err(fail)?;
        let wait_replicas = match settings.wait_replicas {
            Some(n) => n,
            // Durable revocations by default wherever there is a replica to make them durable.
            None if sentinel.is_some() => {
                let mut c = conn.clone();
                let info: String = tokio::time::timeout(
                    connect_bound,
                    ::redis::cmd("INFO")
                        .arg("replication")
                        .query_async::<String>(&mut c),
                )
                .await
                .map_err(|_| RedisUnavailable(format!("{var}: timed out reading INFO")))?
                .map_err(fail)?;
                u32::from(connected_replicas(&info) > 0)
            }
            None => 0,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                sentinel,
                cluster: None,
                current: RwLock::new(Current {
                    generation: 0,
                    client,
                    conn: Conn::Single(conn),
                    durable: Conn::Single(durable),
                }),
                resolving: tokio::sync::Mutex::new(None),
                wait_replicas,
                wait_timeout: settings.wait_timeout,
            }),
            prefix: Arc::from(prefix),
            timeout,
            metrics,
        })
    }

    /// Connects to a Redis Cluster through its seed nodes (any reachable one is enough: the
    /// client reads the slot map from it and connects to every master). The cluster client
    /// follows MOVED/ASK, resharding and failovers itself; there is nothing to re-resolve.
    async fn connect_cluster(
        urls: &[String],
        settings: &RedisSettings,
        prefix: &str,
        metrics: RedisMetrics,
    ) -> Result<Self, RedisUnavailable> {
        const VAR: &str = "REDIS_CLUSTER_URLS";
        let (tls, timeout) = (&settings.tls, settings.timeout);
        let fail = |e: RedisError| RedisUnavailable(explain(VAR, tls, &e));
        let seeds = urls
            .iter()
            .map(|u| single_client(u, tls))
            .collect::<RedisResult<Vec<_>>>()
            .map_err(fail)?;
        let first = seeds
            .first()
            .cloned()
            .ok_or_else(|| RedisUnavailable(format!("{VAR}: no seed node")))?;
        // Our own bound ([`Redis::bounded`]) cuts every call; the library's retries only
        // matter within it (a MOVED, a reconnection, a slot map refresh after a failover).
        let builder = |response: Option<Duration>| {
            let mut b = ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout * 4)
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(timeout.as_millis() as u64);
            if let Some(r) = response {
                b = b.response_timeout(r);
            }
            if tls.is_set() {
                b = b.certs(certificates(tls));
            }
            b.build()
        };
        let connect = |response: Option<Duration>| async move {
            let client = builder(response)?;
            client.get_async_connection().await
        };
        let bound = timeout * 8;
        let timed_out = || RedisUnavailable(format!("{VAR}: timed out connecting to the cluster"));
        let conn = tokio::time::timeout(bound, connect(Some(timeout)))
            .await
            .map_err(|_| timed_out())?
            .map_err(fail)?;
        // Revocations WAIT on connections of their own (see `Current::durable`).
        let durable = tokio::time::timeout(bound, connect(None))
            .await
            .map_err(|_| timed_out())?
            .map_err(fail)?;
        let wait_replicas = match settings.wait_replicas {
            Some(n) => n,
            None => {
                let mut c = conn.clone();
                let nodes: String = tokio::time::timeout(
                    bound,
                    ::redis::cmd("CLUSTER").arg("NODES").query_async(&mut c),
                )
                .await
                .map_err(|_| RedisUnavailable(format!("{VAR}: timed out reading CLUSTER NODES")))?
                .map_err(fail)?;
                u32::from(cluster_has_replicas(&nodes))
            }
        };
        let subscriber = Subscriber::new(seeds, Some(conn.clone()));
        let _ = tokio::time::timeout(timeout * 4, subscriber.discover()).await;
        Ok(Self {
            shared: Arc::new(Shared {
                sentinel: None,
                cluster: Some(subscriber),
                current: RwLock::new(Current {
                    generation: 0,
                    client: first,
                    conn: Conn::Cluster(conn),
                    durable: Conn::Cluster(durable),
                }),
                resolving: tokio::sync::Mutex::new(None),
                wait_replicas,
                wait_timeout: settings.wait_timeout,
            }),
            prefix: Arc::from(prefix),
            timeout,
            metrics,
        })
    }

    fn current(&self) -> Current {
        // A poisoned lock still holds a usable connection.
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A dedicated pub/sub connection to the current master (it cannot share the multiplexed
    /// one). A failure makes the sentinels be asked again, so the next attempt may go elsewhere.
    pub async fn pubsub(&self) -> Result<PubSub, RedisUnavailable> {
        if let Some(subscriber) = &self.shared.cluster {
            return subscriber
                .connect(self.timeout * 4)
                .await
                .map(|(_, pubsub)| pubsub)
                .map_err(RedisUnavailable);
        }
        let current = self.current();
        match tokio::time::timeout(self.timeout * 4, current.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => {
                self.failed(current.generation, &e);
                Err(e.into())
            }
            Err(_) => {
                self.follow(current.generation);
                Err(RedisUnavailable("timed out connecting".into()))
            }
        }
    }

    /// The invalidation subscription's pub/sub connections, with their nodes' addresses: one to
    /// the current master; on a cluster, one to every master (see [`Subscriber`]).
    pub async fn pubsubs(&self) -> Result<Vec<(String, PubSub)>, RedisUnavailable> {
        if let Some(subscriber) = &self.shared.cluster {
            return subscriber
                .connect_all(self.timeout * 4)
                .await
                .map_err(RedisUnavailable);
        }
        let addr = self.current().addr();
        Ok(vec![(addr, self.pubsub().await?)])
    }

    /// On a cluster: connections to the masters not among `linked`, and the linked nodes that
    /// serve no slot now; elsewhere nothing.
    pub async fn reconcile_pubsubs(&self, linked: &[String]) -> Reconciled {
        match &self.shared.cluster {
            Some(subscriber) => subscriber.reconcile(linked, self.timeout * 4).await,
            None => Reconciled::default(),
        }
    }

    /// The client of the current master (tests: a dedicated connection of their own).
    pub fn client(&self) -> Client {
        self.current().client
    }

    /// A clone of the shared multiplexed connection.
    pub fn conn(&self) -> Conn {
        self.current().conn
    }

    /// Every key and channel of this deployment starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Replicas a revocation waits for (0: none).
    pub fn wait_replicas(&self) -> u32 {
        self.shared.wait_replicas
    }

    /// One Redis call: bounded by the timeout (a slow Redis gives 503, not a pile-up), timed and
    /// counted by `op`.
    pub async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisUnavailable> {
        let generation = self.generation();
        self.bounded_for(op, self.timeout, generation, fut).await
    }

    async fn bounded_for<T>(
        &self,
        op: &'static str,
        limit: Duration,
        generation: u64,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisUnavailable> {
        let call = async {
            match tokio::time::timeout(limit, fut).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    self.failed(generation, &e);
                    Err(RedisUnavailable::from(e))
                }
                Err(_) => {
                    self.follow(generation);
                    Err(RedisUnavailable("Redis call timed out".into()))
                }
            }
        };
        self.metrics.calls.observe(op, call).await
    }

    /// [`bounded`](Self::bounded) with a clone of the shared connection.
    pub async fn call<T>(
        &self,
        op: &'static str,
        run: impl AsyncFnOnce(&mut Conn) -> RedisResult<T>,
    ) -> Result<T, RedisUnavailable> {
        let current = self.current();
        let mut conn = current.conn;
        self.bounded_for(op, self.timeout, current.generation, run(&mut conn))
            .await
    }

    /// A script that revokes something, acknowledged only once the required replicas have it:
    /// EVALSHA and WAIT go out together on one connection (WAIT covers every write that
    /// connection made before it), so a failover cannot bring back what was answered as
    /// revoked. Fewer replicas within REDIS_WAIT_TIMEOUT_MS: an error (503), never a false yes.
    pub async fn revoking<T: FromRedisValue>(
        &self,
        op: &'static str,
        call: &ScriptCall<'_>,
    ) -> Result<T, RedisUnavailable> {
        let required = self.shared.wait_replicas;
        if required == 0 {
            return self.call(op, async |c| call.invoke(c).await).await;
        }
        let wait_ms = self.shared.wait_timeout.as_millis() as u64;
        let current = self.current();
        let limit = self.timeout + self.shared.wait_timeout;
        if let Conn::Cluster(_) = current.durable {
            // WAIT goes to the master of the script's slot, on the connection that carried the
            // script's write: one shard without a replica fails only its own users' revocations.
            // (A keyless WAIT would go to every master and answer the smallest count.)
            let mut conn = current.durable.clone();
            let waiting = AtomicBool::new(false);
            let run = async {
                let value: T = call.invoke(&mut conn).await?;
                waiting.store(true, Ordering::Relaxed);
                let acknowledged = wait(&mut conn, call.slot(), required, wait_ms).await?;
                Ok((value, acknowledged))
            };
            let result = self.bounded_for(op, limit, current.generation, run).await;
            return self.waited(result, waiting.into_inner(), required, wait_ms);
        }
        let mut pipe = ::redis::pipe();
        pipe.add_command(call.evalsha())
            .cmd("WAIT")
            .arg(required)
            .arg(wait_ms);
        let mut conn = current.durable;
        let run = async {
            match pipe.query_async::<(T, u32)>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    call.script.load_async(&mut conn).await?;
                    pipe.query_async(&mut conn).await
                }
                other => other,
            }
        };
        let result = self.bounded_for(op, limit, current.generation, run).await;
        self.waited(result, true, required, wait_ms)
    }

    /// A write that revokes only sometimes (a login that ends the oldest sessions beyond
    /// MAX_SESSIONS_PER_USER): when revocations WAIT, it goes out on their connection and, if
    /// `revoked` says it ended something, is followed there by the WAIT a revocation gets, so
    /// what it ended stays ended across a failover. When the replicas fall short, `undo` runs
    /// (best effort, on the shared connection) and the answer is an error (503): what the write
    /// added is not handed out while what it ended may come back. `key`: one of the write's
    /// keys (on a cluster, its slot's master is asked).
    pub async fn sometimes_revoking<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        write: &Pipeline,
        revoked: impl FnOnce(&T) -> bool,
        undo: &ScriptCall<'_>,
    ) -> Result<T, RedisUnavailable> {
        let required = self.shared.wait_replicas;
        if required == 0 {
            let current = self.current();
            let mut conn = current.conn;
            let write = transaction(write, key, &mut conn);
            return self
                .bounded_for(op, self.timeout, current.generation, write)
                .await;
        }
        let wait_ms = self.shared.wait_timeout.as_millis() as u64;
        let current = self.current();
        let mut conn = current.durable.clone();
        let waiting = AtomicBool::new(false);
        let run = async {
            let value: T = transaction(write, key, &mut conn).await?;
            if !revoked(&value) {
                return Ok((value, None));
            }
            waiting.store(true, Ordering::Relaxed);
            let slot = Slot::for_key(key.as_bytes());
            let acknowledged = wait(&mut conn, slot, required, wait_ms).await?;
            Ok((value, Some(acknowledged)))
        };
        let limit = self.timeout + self.shared.wait_timeout;
        let result = match self.bounded_for(op, limit, current.generation, run).await {
            Ok((value, None)) => return Ok(value),
            Ok((value, Some(acknowledged))) => Ok((value, acknowledged)),
            Err(e) => Err(e),
        };
        let waited = waiting.into_inner();
        let outcome = self.waited(result, waited, required, wait_ms);
        if outcome.is_err() && waited {
            let _ = self
                .call("undo", async |c| undo.invoke::<i64>(c).await.map(drop))
                .await;
        }
        outcome
    }

    /// Counts the outcome of a WAIT (`waited`: it was sent, so an error is the WAIT's) and
    /// turns a shortfall into an error.
    fn waited<T>(
        &self,
        result: Result<(T, u32), RedisUnavailable>,
        waited: bool,
        required: u32,
        wait_ms: u64,
    ) -> Result<T, RedisUnavailable> {
        let counters = &self.metrics.wait;
        match result {
            Ok((value, acknowledged)) if acknowledged >= required => {
                counters.ok.inc();
                Ok(value)
            }
            Ok((_, acknowledged)) => {
                counters.short.inc();
                Err(RedisUnavailable(format!(
                    "{acknowledged} of {required} replicas acknowledged within {wait_ms} ms"
                )))
            }
            Err(e) => {
                if waited {
                    counters.error.inc();
                }
                Err(e)
            }
        }
    }

    fn generation(&self) -> u64 {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// A call on the connection of `generation` failed: if the failure says the master may have
    /// moved (dropped, refused, read-only, timed out), ask the sentinels.
    fn failed(&self, generation: u64, e: &RedisError) {
        if may_have_moved(e) {
            self.follow(generation);
        }
    }

    /// Asks the sentinels where the master is, in the background (calls do not wait for it;
    /// they fail with 503 until the new master is in use).
    fn follow(&self, generation: u64) {
        if self.shared.sentinel.is_none() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.resolve(generation).await });
    }

    async fn resolve(&self, generation: u64) {
        let Some(sentinel) = &self.shared.sentinel else {
            return;
        };
        let mut last = self.shared.resolving.lock().await;
        if self.generation() != generation || last.is_some_and(|t| t.elapsed() < RESOLVE_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        let bound = self.timeout * 4;
        let asked = async { sentinel.lock().await.async_get_client().await };
        let client = match tokio::time::timeout(bound, asked).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "the sentinels named no reachable master");
                return;
            }
            Err(_) => {
                tracing::warn!("timed out asking the sentinels for the master");
                return;
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        let old = self.current();
        if addr == old.addr() {
            // Still the same master: its connection manager reconnects by itself.
            return;
        }
        let (conn, durable) = match tokio::time::timeout(bound, managers(&client, self.timeout))
            .await
        {
            Ok(Ok(conns)) => conns,
            Ok(Err(e)) => {
                tracing::warn!(master = %addr, cause = %e, "cannot connect to the new Redis master");
                return;
            }
            Err(_) => {
                tracing::warn!(master = %addr, "timed out connecting to the new Redis master");
                return;
            }
        };
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *current = Current {
            generation: current.generation + 1,
            client,
            conn: Conn::Single(conn),
            durable: Conn::Single(durable),
        };
        tracing::warn!(from = %old.addr(), to = %addr, "Redis master changed (Sentinel failover); following it");
    }
}

/// `WAIT required wait_ms` on `conn`, after the write it must cover; on a cluster, sent to the
/// master of `slot` (the node that took the write, on the same connection).
async fn wait(conn: &mut Conn, slot: Slot, required: u32, wait_ms: u64) -> RedisResult<u32> {
    let mut cmd = ::redis::cmd("WAIT");
    cmd.arg(required).arg(wait_ms);
    match conn {
        Conn::Cluster(c) => {
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                Route::with_slot(slot, SlotAddr::Master),
            ));
            Ok(u32::from_redis_value(c.route_command(cmd, route).await?)?)
        }
        other => cmd.query_async(other).await,
    }
}

/// A script invocation that can be sent inside a pipeline (EVALSHA by hash, loaded on NOSCRIPT
/// like [`Script::invoke_async`] does).
pub struct ScriptCall<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'a> ScriptCall<'a> {
    pub fn new(script: &'a Script) -> Self {
        Self {
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The hash slot of the script's keys (they share one: see the module's doc).
    fn slot(&self) -> Slot {
        Slot::for_key(self.keys.first().map(Vec::as_slice).unwrap_or_default())
    }

    fn evalsha(&self) -> Cmd {
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    pub async fn invoke<T: FromRedisValue>(&self, conn: &mut Conn) -> RedisResult<T> {
        match self.evalsha().query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await?;
                self.evalsha().query_async(conn).await
            }
            other => other,
        }
    }
}

/// The shared connection and the one revocations WAIT on.
async fn managers(
    client: &Client,
    timeout: Duration,
) -> RedisResult<(ConnectionManager, ConnectionManager)> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout * 4))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
    // Its calls may take REDIS_WAIT_TIMEOUT_MS longer; `bounded_for` bounds them.
    let durable =
        ConnectionManager::new_with_config(client.clone(), config.set_response_timeout(None))
            .await?;
    Ok((conn, durable))
}

fn certificates(tls: &RedisTls) -> TlsCertificates {
    TlsCertificates {
        client_tls: tls.client_pem.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: tls.ca_pem.clone(),
    }
}

/// A client for one URL: rediss:// with the system roots, or with the configured files.
fn single_client(url: &str, tls: &RedisTls) -> RedisResult<Client> {
    if tls.is_set() {
        Client::build_with_tls(url, certificates(tls))
    } else {
        Client::open(url)
    }
}

/// The sentinels at `urls`; the data nodes are reached with the same scheme, credentials and
/// certificates as the sentinels.
fn sentinel_client(urls: &[String], master: &str, tls: &RedisTls) -> RedisResult<SentinelClient> {
    let infos = urls
        .iter()
        .map(|u| u.as_str().into_connection_info())
        .collect::<RedisResult<Vec<_>>>()?;
    let first = infos[0].redis_settings().clone();
    let mut builder = SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr().clone()),
        master,
        SentinelServerType::Master,
    )?;
    if let Some(user) = first.username() {
        builder = builder
            .set_client_to_sentinel_username(user)
            .set_client_to_redis_username(user);
    }
    if let Some(password) = first.password() {
        builder = builder
            .set_client_to_sentinel_password(password)
            .set_client_to_redis_password(password);
    }
    if urls[0].starts_with("rediss://") {
        builder = builder
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_redis_tls_mode(TlsMode::Secure);
        if tls.is_set() {
            builder = builder
                .set_client_to_sentinel_certificates(certificates(tls))
                .set_client_to_redis_certificates(certificates(tls));
        }
    }
    builder.build()
}

/// Where the invalidation subscription connects: dedicated pub/sub connections.
///
/// On a cluster, invalidations use classic PUBLISH, which the cluster broadcasts to every node,
/// so a subscriber on any node (master or replica) hears every pod. The subscription connects to
/// every master: the master that ran a revocation's script delivers its message itself, at once,
/// while the copies the other masters receive over the cluster bus arrive later (the subscriber
/// keeps the first copy of each, see [`crate::session::invalidation::FirstCopies`]). Any one
/// link still hears everything, so a master that is down or new (a promoted replica) only costs
/// speed until it is linked. Without any master answering, one node that answers does: the
/// seeds, then the nodes the cluster itself listed (refreshed on every connection), so one seed
/// is enough.
/// (Sharded pub/sub would keep a message on one shard, but the scripts publish atomically with
/// their writes and SPUBLISH from a script must name a channel of the script's slot: that is a
/// channel per slot, all of them subscribed by every pod on every shard, and re-subscribed
/// whenever a failover moves a shard. Subscribing on every master gets the same direct delivery
/// with one channel; the broadcast costs one cluster-bus message per node per revocation, which
/// is small next to the token checks that never publish.)
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
    /// previous list stays); the masters among them.
    async fn discover(&self) -> Option<Vec<Client>> {
        let nodes = self.discover_nodes().await?;
        Some(nodes.into_iter().filter(|n| n.1).map(|n| n.0).collect())
    }

    /// As [`Self::discover`]: every node that is not failing, and whether it is a master.
    async fn discover_nodes(&self) -> Option<Vec<(Client, bool)>> {
        let (Some(mut conn), Some(seed)) = (self.cluster.clone(), self.seeds.first()) else {
            return None;
        };
        let text: String = ::redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .ok()?;
        let client = |(host, port, _): &(String, u16, bool)| {
            let info = seed.get_connection_info().clone();
            let addr = match info.addr() {
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => ConnectionAddr::Tcp(host.clone(), *port),
            };
            Client::open(info.set_addr(addr)).ok()
        };
        let nodes = cluster_nodes(&text);
        let all: Vec<Client> = nodes.iter().filter_map(client).collect();
        if !all.is_empty() {
            if let Ok(mut d) = self.discovered.lock() {
                *d = all;
            }
        }
        Some(
            nodes
                .iter()
                .filter_map(|n| Some((client(n)?, n.2)))
                .collect(),
        )
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
    /// the one used last; with its address.
    pub async fn connect(&self, limit: Duration) -> Result<(String, PubSub), String> {
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
                    return Ok((node_addr(&nodes[n]), pubsub));
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out connecting".to_string(),
            }
        }
        self.next.store(start + 1, Ordering::Relaxed);
        Err(last)
    }

    /// A pub/sub connection to every master that answers within `limit` (all tried at once),
    /// or, if none does, to one node (see [`Self::connect`]); with their addresses.
    pub async fn connect_all(&self, limit: Duration) -> Result<Vec<(String, PubSub)>, String> {
        let masters = tokio::time::timeout(limit, self.discover())
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let links = connect_each(&masters, limit).await;
        if !links.is_empty() {
            return Ok(links);
        }
        Ok(vec![self.connect(limit).await?])
    }

    /// Connections to the masters whose address is not in `linked` (promoted since, or not
    /// answering before), and the addresses in `linked` the cluster now lists as replicas or
    /// as masters without slots (a master demoted by a failover, or one that came back after
    /// it; see [`cluster_nodes`]).
    pub async fn reconcile(&self, linked: &[String], limit: Duration) -> Reconciled {
        let Ok(Some(nodes)) = tokio::time::timeout(limit, self.discover_nodes()).await else {
            return Reconciled::default();
        };
        let missing: Vec<Client> = nodes
            .iter()
            .filter(|(node, master)| *master && !linked.contains(&node_addr(node)))
            .map(|(node, _)| node.clone())
            .collect();
        let demoted = nodes
            .iter()
            .filter(|(_, master)| !master)
            .map(|(node, _)| node_addr(node))
            .filter(|addr| linked.contains(addr))
            .collect();
        Reconciled {
            added: connect_each(&missing, limit).await,
            demoted,
        }
    }
}

/// What [`Subscriber::reconcile`] found: connections to masters the links lacked, and linked
/// addresses that serve no slot now.
#[derive(Default)]
pub struct Reconciled {
    pub added: Vec<(String, PubSub)>,
    pub demoted: Vec<String>,
}

fn node_addr(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// A pub/sub connection to each of `nodes` that answers within `limit`.
async fn connect_each(nodes: &[Client], limit: Duration) -> Vec<(String, PubSub)> {
    let tries = nodes.iter().map(|node| async move {
        let pubsub = tokio::time::timeout(limit, node.get_async_pubsub())
            .await
            .ok()?
            .ok()?;
        Some((node_addr(node), pubsub))
    });
    futures_util::future::join_all(tries)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `host:port` of every node in a CLUSTER NODES reply that is neither failing nor without an
/// address (`<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link>
/// <slot>...`), and whether it is a master serving slots. A master without slots serves no key
/// (so runs no script that publishes), and it is how a node that has not yet heard a demoted
/// master's new role lists it for a moment after a failover.
fn cluster_nodes(text: &str) -> Vec<(String, u16, bool)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, flags) = (*fields.get(1)?, *fields.get(2)?);
            if flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"))
            {
                return None;
            }
            // Slot entries are ranges or single slots; `[slot->-id]` / `[slot-<-id]` are
            // migrations in progress, not owned slots.
            let serves = fields.iter().skip(8).any(|slot| !slot.starts_with('['));
            let master = flags.split(',').any(|f| f == "master") && serves;
            let addr = addr.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            (!host.is_empty()).then(|| Some((host.to_string(), port.parse().ok()?, master)))?
        })
        .collect()
}

/// Whether a CLUSTER NODES reply lists a replica.
fn cluster_has_replicas(text: &str) -> bool {
    text.lines().any(|line| {
        line.split_whitespace()
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "slave" || f == "replica"))
    })
}

/// `connected_slaves:N` of `INFO replication`.
fn connected_replicas(info: &str) -> u32 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A MULTI/EXEC pipeline on `key`'s slot. One that meets a moved slot is refused whole
/// (EXECABORT, nothing written), and the cluster client neither redirects it nor reads the new
/// slot map, as it does for single commands: a keyed read on the slot teaches it where the slot
/// went, then the pipeline goes once more.
async fn transaction<T: FromRedisValue>(
    pipe: &Pipeline,
    key: &str,
    conn: &mut Conn,
) -> RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(e) if redirected(&e) => {
            let _: RedisResult<bool> = ::redis::cmd("EXISTS").arg(key).query_async(conn).await;
            pipe.query_async(conn).await
        }
        other => other,
    }
}

/// A cluster's answer that the slot is (being) served elsewhere.
fn redirected(e: &RedisError) -> bool {
    e.redirect_node().is_some()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ExecAbort
            )
        )
}

/// A failure after which the master may be elsewhere.
fn may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
        || e.code().is_some_and(|c| c == "READONLY" || c == "LOADING")
}

/// A start-up failure as the operator needs it: the variable, then the cause in words.
pub fn explain(var: &str, tls: &RedisTls, e: &RedisError) -> String {
    format!("{var}: cannot connect to Redis: {}", explain_cause(tls, e))
}

fn explain_cause(tls: &RedisTls, e: &RedisError) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let roots = if tls.ca_file.is_some() {
        "the CA in REDIS_CA_FILE"
    } else {
        "the system's roots (set REDIS_CA_FILE for a private CA)"
    };
    if e.kind() == ErrorKind::AuthenticationFailed
        || e.code() == Some("WRONGPASS")
        || lower.contains("wrongpass")
        || lower.contains("invalid username-password")
    {
        format!("authentication failed: wrong user or password (WRONGPASS) ({text})")
    } else if e.code() == Some("NOAUTH") || lower.contains("noauth") {
        format!("the server requires a user and password in the URL (NOAUTH) ({text})")
    } else if lower.contains("invalid peer certificate")
        || lower.contains("certificate verify failed")
    {
        format!("TLS certificate verify failed: the server's certificate is not trusted by {roots} ({text})")
    } else if lower.contains("certificaterequired") || lower.contains("certificate required") {
        format!("the server requires a client certificate: set REDIS_CLIENT_CERT_FILE and REDIS_CLIENT_KEY_FILE ({text})")
    } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
        format!("the server does not speak TLS: use redis:// ({text})")
    } else if e.is_connection_refusal() || lower.contains("connection refused") {
        format!("connection refused: is the host and port right, and Redis up? ({text})")
    } else if lower.contains("reset by peer")
        || lower.contains("broken pipe")
        || lower.contains("unexpected end of file")
        || lower.contains("unexpectedeof")
        || e.is_connection_dropped()
    {
        format!(
            "the server closed the connection during the handshake: a TLS-only server needs \
             rediss:// ({text})"
        )
    } else if e.is_timeout() {
        format!("timed out: unreachable host, or a firewall dropping packets? ({text})")
    } else {
        text
    }
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
        // Never connected to: the recorder answers every call.
        let client = Client::open("redis://127.0.0.1:1").expect("a valid URL");
        let redis = Redis {
            shared: Arc::new(Shared {
                sentinel: None,
                cluster: None,
                current: RwLock::new(Current {
                    generation: 0,
                    client,
                    conn: Conn::Recording(recorder.clone()),
                    durable: Conn::Recording(recorder.clone()),
                }),
                resolving: tokio::sync::Mutex::new(None),
                wait_replicas: 0,
                wait_timeout: Duration::from_secs(1),
            }),
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
    use std::io;

    use ::redis::make_extension_error;

    use super::*;

    fn io(kind: io::ErrorKind, text: &str) -> RedisError {
        RedisError::from(io::Error::new(kind, text.to_string()))
    }

    /// Each start-up failure names the variable and says what to fix.
    #[test]
    fn connection_failures_are_explained() {
        let system = RedisTls::default();
        let private = RedisTls {
            ca_file: Some("/etc/redis/ca.crt".into()),
            ..RedisTls::default()
        };
        let cases: Vec<(RedisError, &RedisTls, &[&str])> = vec![
            (
                make_extension_error(
                    "WRONGPASS".into(),
                    Some("invalid username-password pair or user is disabled.".into()),
                ),
                &system,
                &["authentication failed", "WRONGPASS"],
            ),
            (
                RedisError::from((
                    ErrorKind::AuthenticationFailed,
                    "Password authentication failed",
                )),
                &system,
                &["authentication failed", "WRONGPASS"],
            ),
            (
                make_extension_error("NOAUTH".into(), Some("Authentication required.".into())),
                &system,
                &["requires a user and password", "NOAUTH"],
            ),
            (
                io(
                    io::ErrorKind::InvalidData,
                    "invalid peer certificate: UnknownIssuer",
                ),
                &private,
                &[
                    "certificate verify failed",
                    "REDIS_CA_FILE",
                    "UnknownIssuer",
                ],
            ),
            (
                io(
                    io::ErrorKind::InvalidData,
                    "invalid peer certificate: UnknownIssuer",
                ),
                &system,
                &["certificate verify failed", "system's roots"],
            ),
            (
                io(
                    io::ErrorKind::InvalidData,
                    "received fatal alert: CertificateRequired",
                ),
                &private,
                &["client certificate", "REDIS_CLIENT_CERT_FILE"],
            ),
            (
                io(
                    io::ErrorKind::InvalidData,
                    "received corrupt message of type InvalidContentType",
                ),
                &system,
                &["does not speak TLS", "redis://"],
            ),
            (
                io(
                    io::ErrorKind::ConnectionRefused,
                    "Connection refused (os error 111)",
                ),
                &system,
                &["connection refused"],
            ),
            (
                io(
                    io::ErrorKind::ConnectionReset,
                    "Connection reset by peer (os error 104)",
                ),
                &system,
                &["closed the connection", "rediss://"],
            ),
            (
                io(io::ErrorKind::UnexpectedEof, "unexpected end of file"),
                &system,
                &["closed the connection", "rediss://"],
            ),
        ];
        for (error, tls, expected) in cases {
            let text = explain("REDIS_URL", tls, &error);
            assert!(
                text.starts_with("REDIS_URL: cannot connect to Redis: "),
                "{text}"
            );
            for word in expected {
                assert!(text.contains(word), "{text:?} lacks {word:?}");
            }
        }
    }

    /// These failures make the sentinels be asked again; a script error does not.
    #[test]
    fn failures_that_may_mean_a_failover() {
        assert!(may_have_moved(&make_extension_error(
            "READONLY".into(),
            Some("You can't write against a read only replica.".into())
        )));
        assert!(may_have_moved(&io(
            io::ErrorKind::ConnectionRefused,
            "refused"
        )));
        assert!(may_have_moved(&io(
            io::ErrorKind::BrokenPipe,
            "broken pipe"
        )));
        assert!(!may_have_moved(&make_extension_error(
            "ERR".into(),
            Some("Error running script".into())
        )));
    }

    #[test]
    fn replicas_are_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1\r\n";
        assert_eq!(connected_replicas(info), 2);
        assert_eq!(
            connected_replicas("role:master\r\nconnected_slaves:0\r\n"),
            0
        );
        assert_eq!(connected_replicas(""), 0);
    }

    #[test]
    fn cluster_nodes_are_parsed_without_failing_ones() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,node-2 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
6ec2 :0@0 master,noaddr - 0 0 0 disconnected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
a1b2 127.0.0.1:30005@40005 master - 0 1426238316232 5 connected
c3d4 127.0.0.1:30006@40006 master - 0 1426238316232 6 connected [77->-e7d1]
";
        // The last two are masters without slots: a demoted master as a node that has not heard
        // of its new role lists it, and one whose only entry is a migration.
        assert_eq!(
            cluster_nodes(text),
            vec![
                ("127.0.0.1".to_string(), 30004, false),
                ("127.0.0.1".to_string(), 30002, true),
                ("127.0.0.1".to_string(), 30001, true),
                ("127.0.0.1".to_string(), 30005, false),
                ("127.0.0.1".to_string(), 30006, false),
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

    #[test]
    fn replicas_are_seen_in_cluster_nodes() {
        let with = "07c3 127.0.0.1:30004@40004 slave e7d1 0 1 4 connected\n\
                    e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-16383\n";
        assert!(cluster_has_replicas(with));
        assert!(!cluster_has_replicas(
            "e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-16383\n"
        ));
    }
}
