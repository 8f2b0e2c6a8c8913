//! The SessionRegistry actor: owns the session store, the writes to the local cache and, with
//! Redis, the subscription to `{prefix}invalidate` through which every pod hears of revocations.
//! The subscription and the invalidations it receives run on the actor; each request's store
//! work and the cache writes that follow it are a [`Reply`] the caller runs (see
//! [`crate::actor`]).
//!
//! Staleness when an invalidation is lost (pub/sub is at-most-once) is bounded twice over:
//! cache entries live at most SESSION_CACHE_TTL, and while the subscription is down the cache is
//! not trusted (every check reads Redis) and is emptied once the pod has resubscribed.
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use actix::prelude::*;
use futures_util::StreamExt;
use rand::Rng;
use redis::aio::PubSubSink;
use uuid::Uuid;

use super::{
    cache::{CacheEntry, Screened},
    invalidation::{FirstCopies, Received},
    now_unix, Created, Invalidation, RefreshToken, Rotation, SessionCache, SessionError,
    SessionRecord, SessionState, SessionStore,
};
use crate::{actor::Reply, metrics::Metrics};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct SessionRegistry {
    store: SessionStore,
    cache: SessionCache,
    metrics: Metrics,
    sub: Option<Subscription>,
}

/// The pub/sub side: dedicated connections (one to the current master; on a cluster, one to
/// every master: see [`crate::redis::Subscriber`]), all replaced whenever one dies.
struct Subscription {
    redis: crate::redis::Redis,
    channel: String,
    timeout: Duration,
    ping_interval: Duration,
    /// Bumped on every connect and loss so events of dead connections are ignored.
    generation: u64,
    /// The live links; empty while not subscribed.
    links: Vec<Link>,
    /// Numbers the links, for [`FirstCopies`].
    next_link: u64,
    copies: FirstCopies,
    connecting: bool,
    /// Reconciling the links with the cluster's masters (see [`SessionRegistry::reconcile`]).
    reconciling: bool,
    ever_connected: bool,
    backoff: Duration,
}

/// One subscribed connection: its number (for [`FirstCopies`]), its node's address, its command
/// side, and its message stream on the actor.
struct Link {
    id: u64,
    addr: String,
    sink: PubSubSink,
    stream: SpawnHandle,
}

enum SubEvent {
    Message(u64, redis::Msg),
    Ended(u64),
}

/// Subscribed connections, not yet attached to the actor.
type Subscribed = Vec<(String, PubSubSink, redis::aio::PubSubStream)>;

/// Subscribes each of `pubsubs` to `channel` within `limit`; those that fail are dropped.
async fn subscribe_each(
    pubsubs: Vec<(String, redis::aio::PubSub)>,
    channel: &str,
    limit: Duration,
) -> Result<Subscribed, String> {
    let tries = pubsubs.into_iter().map(|(addr, pubsub)| async move {
        let (mut sink, stream) = pubsub.split();
        match tokio::time::timeout(limit, sink.subscribe(channel)).await {
            Ok(Ok(())) => Ok((addr, sink, stream)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out subscribing".to_string()),
        }
    });
    let mut subscribed = Vec::new();
    let mut last = "no connection to subscribe on".to_string();
    for result in futures_util::future::join_all(tries).await {
        match result {
            Ok(link) => subscribed.push(link),
            Err(e) => last = e,
        }
    }
    if subscribed.is_empty() {
        return Err(last);
    }
    Ok(subscribed)
}

impl SessionRegistry {
    pub fn new(
        store: SessionStore,
        cache: SessionCache,
        metrics: Metrics,
        ping_interval: Duration,
    ) -> Self {
        let sub = match &store {
            SessionStore::Redis(r) => Some(Subscription {
                redis: r.redis().clone(),
                channel: r.channel().to_string(),
                timeout: r.redis().timeout(),
                ping_interval,
                generation: 0,
                links: Vec::new(),
                next_link: 0,
                copies: FirstCopies::default(),
                connecting: false,
                reconciling: false,
                ever_connected: false,
                backoff: BACKOFF_MIN,
            }),
            SessionStore::Memory(_) => {
                metrics.invalidation_link_up.set(1);
                None
            }
        };
        Self {
            store,
            cache,
            metrics,
            sub,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let Some(sub) = self.sub.as_mut() else { return };
        if sub.connecting || !sub.links.is_empty() {
            return;
        }
        sub.connecting = true;
        let (redis, channel, limit) = (sub.redis.clone(), sub.channel.clone(), sub.timeout * 4);
        let attempt = async move {
            let pubsubs = redis.pubsubs().await.map_err(|e| e.to_string())?;
            subscribe_each(pubsubs, &channel, limit).await
        };
        ctx.spawn(attempt.into_actor(self).map(|result, act, ctx| {
            let Some(sub) = act.sub.as_mut() else { return };
            sub.connecting = false;
            match result {
                Ok(subscribed) => {
                    sub.generation += 1;
                    sub.copies.reset(subscribed.len());
                    let nodes: Vec<String> = subscribed.iter().map(|l| l.0.clone()).collect();
                    act.attach(subscribed, ctx);
                    let Some(sub) = act.sub.as_mut() else { return };
                    sub.backoff = BACKOFF_MIN;
                    let resubscribed = std::mem::replace(&mut sub.ever_connected, true);
                    // Whatever was published while we were not listening is gone: forget every
                    // cached answer before trusting the cache again.
                    act.cache.flush();
                    act.cache.set_trusted(true);
                    act.metrics.cache_flushes.inc();
                    act.metrics.invalidation_link_up.set(1);
                    if resubscribed {
                        act.metrics.pubsub_resubscriptions.inc();
                        tracing::info!(channel = %sub.channel, ?nodes, "re-subscribed to invalidations; local session cache emptied");
                    } else {
                        tracing::info!(channel = %sub.channel, ?nodes, "subscribed to invalidations");
                    }
                }
                Err(cause) => {
                    tracing::warn!(%cause, retry_in_ms = sub.backoff.as_millis() as u64, "cannot subscribe to invalidations");
                    act.retry_later(ctx);
                }
            }
        }));
    }

    /// Puts subscribed connections on the actor, as links of the current generation.
    fn attach(&mut self, subscribed: Subscribed, ctx: &mut Context<Self>) {
        let Some(sub) = self.sub.as_mut() else { return };
        let generation = sub.generation;
        for (addr, sink, stream) in subscribed {
            let link = sub.next_link;
            sub.next_link += 1;
            let events = stream.map(move |msg| SubEvent::Message(link, msg)).chain(
                futures_util::stream::once(async move { SubEvent::Ended(generation) }),
            );
            let stream = ctx.add_stream(events);
            sub.links.push(Link {
                id: link,
                addr,
                sink,
                stream,
            });
        }
        self.metrics.invalidation_links.set(sub.links.len() as i64);
    }

    /// On a cluster: links the masters the subscription lacks (a replica promoted since, or a
    /// master that did not answer before), and drops the links to nodes that serve no slot now
    /// (a master demoted by a failover, or one restarted after it, which calls itself a master
    /// until it learns otherwise). No cache flush: every node hears every message, so the links
    /// that stayed up heard everything.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let Some(sub) = self.sub.as_mut() else { return };
        if sub.reconciling || sub.connecting || sub.links.is_empty() {
            return;
        }
        sub.reconciling = true;
        let (redis, channel, limit) = (sub.redis.clone(), sub.channel.clone(), sub.timeout * 4);
        let (generation, linked) = (
            sub.generation,
            sub.links.iter().map(|l| l.addr.clone()).collect::<Vec<_>>(),
        );
        let attempt = async move {
            let found = redis.reconcile_pubsubs(&linked).await;
            let added = if found.added.is_empty() {
                Vec::new()
            } else {
                subscribe_each(found.added, &channel, limit)
                    .await
                    .unwrap_or_default()
            };
            (added, found.demoted)
        };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(move |(subscribed, demoted), act, ctx| {
                    let Some(sub) = act.sub.as_mut() else { return };
                    sub.reconciling = false;
                    // Lost meanwhile: the next full subscription starts from the cluster's view.
                    if sub.generation != generation || sub.links.is_empty() {
                        return;
                    }
                    if !subscribed.is_empty() {
                        for _ in &subscribed {
                            sub.copies.add_link();
                        }
                        let nodes: Vec<String> = subscribed.iter().map(|l| l.0.clone()).collect();
                        tracing::info!(?nodes, "subscribed to invalidations on more masters");
                        act.attach(subscribed, ctx);
                    }
                    act.drop_links(&demoted, ctx);
                }),
        );
    }

    /// Closes the links to `addrs`, always keeping one: a replica hears every message too, and
    /// a view that wrongly calls a master a replica (a node that has just restarted) is
    /// corrected at the next reconciliation.
    fn drop_links(&mut self, addrs: &[String], ctx: &mut Context<Self>) {
        let Some(sub) = self.sub.as_mut() else { return };
        for addr in addrs {
            if sub.links.len() <= 1 {
                break;
            }
            if let Some(i) = sub.links.iter().position(|l| &l.addr == addr) {
                let link = sub.links.remove(i);
                ctx.cancel_future(link.stream);
                sub.copies.remove_link(link.id);
                tracing::info!(node = %addr, "stopped hearing invalidations on a node that is a replica now");
            }
        }
        self.metrics.invalidation_links.set(sub.links.len() as i64);
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>) {
        let Some(sub) = self.sub.as_mut() else { return };
        // Full jitter, so pods that lost Redis together do not reconnect in lockstep.
        let delay = rand::rng().random_range(BACKOFF_MIN.min(sub.backoff)..=sub.backoff);
        sub.backoff = (sub.backoff * 2).min(BACKOFF_MAX);
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    /// The subscription of `generation` is dead (stream ended, or a ping failed).
    fn lost(&mut self, generation: u64, cause: &str, ctx: &mut Context<Self>) {
        let Some(sub) = self.sub.as_mut() else { return };
        if generation != sub.generation || sub.links.is_empty() {
            return;
        }
        // One link down is enough: its node may have taken messages with it (a master that
        // published and died), so all links are replaced and the cache emptied.
        sub.generation += 1;
        for link in sub.links.drain(..) {
            ctx.cancel_future(link.stream);
        }
        self.metrics.invalidation_links.set(0);
        // From now until the resubscription, invalidations may be missed: believe only Redis.
        self.cache.set_trusted(false);
        self.metrics.invalidation_link_up.set(0);
        tracing::warn!(%cause, "invalidation subscription lost; checking every token against Redis until resubscribed");
        self.retry_later(ctx);
    }

    /// A silently dead connection (no FIN, e.g. a network partition) is only noticed by asking.
    fn ping(&mut self, ctx: &mut Context<Self>) {
        let Some(sub) = self.sub.as_ref() else { return };
        if sub.links.is_empty() {
            return;
        }
        let sinks: Vec<PubSubSink> = sub.links.iter().map(|l| l.sink.clone()).collect();
        let (generation, limit) = (sub.generation, sub.timeout.max(sub.ping_interval));
        let probe = async move {
            let pings = sinks.into_iter().map(|mut sink| async move {
                match tokio::time::timeout(limit, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("ping timed out".to_string()),
                }
            });
            futures_util::future::join_all(pings)
                .await
                .into_iter()
                .collect::<Result<(), String>>()
        };
        ctx.spawn(probe.into_actor(self).map(move |result, act, ctx| {
            if let Err(cause) = result {
                act.lost(generation, &cause, ctx);
            }
        }));
    }
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        if let Some(sub) = &self.sub {
            ctx.run_interval(sub.ping_interval, |act, ctx| {
                act.ping(ctx);
                act.reconcile(ctx);
            });
            self.connect(ctx);
        }
    }
}

impl StreamHandler<SubEvent> for SessionRegistry {
    fn handle(&mut self, event: SubEvent, ctx: &mut Self::Context) {
        match event {
            SubEvent::Message(link, msg) => {
                let payload = msg.get_payload_bytes();
                let Some(sub) = self.sub.as_mut() else { return };
                if sub.copies.first(link, payload, Instant::now()) {
                    self.received(payload, ctx);
                }
            }
            SubEvent::Ended(generation) => self.lost(generation, "connection closed", ctx),
        }
    }

    /// The default would stop the actor; a finished stream is handled by `SubEvent::Ended`.
    fn finished(&mut self, _: &mut Self::Context) {}
}

impl SessionRegistry {
    /// The first copy of a message.
    fn received(&mut self, payload: &[u8], ctx: &mut Context<Self>) {
        match Received::decode(payload) {
            Some(Received {
                invalidation: inv,
                published_at_micros,
            }) => {
                self.metrics.invalidations_received.inc();
                if let Some(at) = published_at_micros {
                    self.metrics
                        .revocation_propagation
                        .observe(propagation_seconds(at, SystemTime::now()));
                }
                let cache = self.cache.clone();
                // `wait` keeps invalidations in arrival order.
                ctx.wait(actix::fut::wrap_future(
                    async move { cache.apply(&inv).await },
                ));
            }
            None => tracing::warn!("ignored a malformed invalidation message"),
        }
    }
}

/// Seconds from a publish stamped `published_at_micros` (Redis clock) to `now` (this pod's
/// clock); a receipt that the clocks' skew puts before the publish counts as 0.
fn propagation_seconds(published_at_micros: u64, now: SystemTime) -> f64 {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    now.saturating_sub(published_at_micros) as f64 / 1e6
}

/// Sessions the store has just revoked (and, with Redis, announced in one message): this pod
/// refuses them at once, and the metrics count them.
async fn revoked_here(
    store: &SessionStore,
    cache: &SessionCache,
    metrics: &Metrics,
    sids: &[Uuid],
) {
    if sids.is_empty() {
        return;
    }
    cache.apply(&Invalidation::Sessions(sids.to_vec())).await;
    if let SessionStore::Redis(_) = store {
        metrics.invalidations_published.inc();
    }
    metrics.sessions_revoked.inc_by(sids.len() as u64);
}

/// Stores a new session and caches it, so the first request with its token is a cache hit.
/// Sessions it ends (beyond MAX_SESSIONS_PER_USER) end on every pod.
#[derive(Message)]
#[rtype(result = "Reply<Result<Created, SessionError>>")]
pub struct CreateSession(pub SessionRecord);

impl Handler<CreateSession> for SessionRegistry {
    type Result = Reply<Result<Created, SessionError>>;

    fn handle(&mut self, msg: CreateSession, _: &mut Self::Context) -> Self::Result {
        let (store, cache, metrics) =
            (self.store.clone(), self.cache.clone(), self.metrics.clone());
        Reply::new(async move {
            let rec = msg.0;
            let created = store.create(&rec).await?;
            let Created::Stored { evicted } = &created else {
                return Ok(created);
            };
            revoked_here(&store, &cache, &metrics, evicted).await;
            metrics.sessions_created.inc();
            let state = SessionState {
                user_id: rec.user_id,
                expires_at: rec.expires_at,
                last_seen_at: rec.last_seen_at,
                access: rec.access.clone(),
                auth: rec.auth.clone(),
            };
            let entry = CacheEntry::new(Some(state), Instant::now());
            cache.insert(rec.session_id, Arc::new(entry)).await;
            Ok(created)
        })
    }
}

/// The cache-miss path of a token check: read the store (one read for concurrent misses of one
/// session) and cache the answer. `fresh` bypasses a cached answer (possible idle session).
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<SessionState>, SessionError>>")]
pub struct Validate {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub fresh: bool,
}

impl Handler<Validate> for SessionRegistry {
    type Result = Reply<Result<Option<SessionState>, SessionError>>;

    fn handle(&mut self, msg: Validate, _: &mut Self::Context) -> Self::Result {
        let (store, cache) = (self.store.clone(), self.cache.clone());
        let Validate {
            user_id,
            session_id: sid,
            fresh,
        } = msg;
        Reply::new(async move {
            let load = |store: SessionStore| async move {
                let read_at = Instant::now();
                let state = store.load(user_id, sid).await?;
                Ok::<_, SessionError>(Arc::new(CacheEntry::new(state, read_at)))
            };
            let cacheable = cache.is_trusted() && !cache.ttl().is_zero();
            let mut entry = if cacheable && !fresh {
                cache
                    .entries()
                    .try_get_with(sid, load(store.clone()))
                    .await
                    .map_err(|e| (*e).clone())?
            } else if cacheable {
                let entry = load(store.clone()).await?;
                cache.insert(sid, entry.clone()).await;
                entry
            } else {
                // Not trusted (subscription down): the store's answer, not cached, since an
                // invalidation for it could be missed. If the store is unreachable, a cached entry
                // younger than SESSION_CACHE_TTL is the best answer there is; without one, 503.
                match load(store.clone()).await {
                    Ok(entry) => entry,
                    Err(e) => cache.fallback(sid).await.ok_or(e)?,
                }
            };
            let mut screened = cache.screen(sid, &entry).await;
            if matches!(screened, Screened::Stale) && cacheable {
                // A read that began before a role change (a concurrent load): read again.
                entry = load(store.clone()).await?;
                cache.insert(sid, entry.clone()).await;
                screened = cache.screen(sid, &entry).await;
            }
            let state = match screened {
                Screened::Live(s) => Some(s),
                // Still older than a change that arrived during the second read: the newest
                // there is, good for this one request; the next one reads again.
                Screened::Stale => entry.state.clone(),
                Screened::Gone => None,
            };
            if let Some(s) = &state {
                let now = now_unix();
                if entry.claim_touch(now, cache.lifetimes().touch_interval) {
                    // Best effort: a lost write only makes last_seen_at a little older.
                    let _ = store.touch(s.user_id, sid, now).await;
                }
            }
            Ok(state)
        })
    }
}

/// Records use of a session (throttled by the caller). Fire-and-forget from the hot path.
#[derive(Message)]
#[rtype(result = "Reply<()>")]
pub struct Touch {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

impl Handler<Touch> for SessionRegistry {
    type Result = Reply<()>;

    fn handle(&mut self, msg: Touch, _: &mut Self::Context) -> Self::Result {
        let (store, cache) = (self.store.clone(), self.cache.clone());
        Reply::new(async move {
            if let Ok(false) = store.touch(msg.user_id, msg.session_id, now_unix()).await {
                // Ended meanwhile (idle elsewhere, or expired): stop serving it from the cache.
                cache.apply(&Invalidation::session(msg.session_id)).await;
            }
        })
    }
}

/// Records a new authentication in a live session (POST /reauthenticate): the store first,
/// then every pod (this one at once) reads the user's sessions again. `Ok(false)`: the session
/// is gone.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, SessionError>>")]
pub struct Reauthenticate {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub auth: super::AuthContext,
}

impl Handler<Reauthenticate> for SessionRegistry {
    type Result = Reply<Result<bool, SessionError>>;

    fn handle(&mut self, msg: Reauthenticate, _: &mut Self::Context) -> Self::Result {
        let (store, cache, metrics) =
            (self.store.clone(), self.cache.clone(), self.metrics.clone());
        Reply::new(async move {
            let updated = store
                .reauthenticate(msg.user_id, msg.session_id, &msg.auth)
                .await?;
            cache.apply(&Invalidation::Access(msg.user_id)).await;
            if updated {
                if let SessionStore::Redis(_) = store {
                    metrics.invalidations_published.inc();
                }
            }
            Ok(updated)
        })
    }
}

/// Ends one session: Redis first (acknowledged before the caller answers), then this pod's
/// cache, then (in the same Redis transaction) the broadcast to every other pod.
/// `Ok(false)`: the session was already gone.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, SessionError>>")]
pub struct Revoke {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

impl Handler<Revoke> for SessionRegistry {
    type Result = Reply<Result<bool, SessionError>>;

    fn handle(&mut self, msg: Revoke, _: &mut Self::Context) -> Self::Result {
        let (store, cache, metrics) =
            (self.store.clone(), self.cache.clone(), self.metrics.clone());
        Reply::new(async move {
            let existed = store.revoke(msg.user_id, msg.session_id).await?;
            // Only a session that was the caller's is evicted: naming someone else's id does
            // nothing, here or on other pods.
            if existed {
                cache.apply(&Invalidation::session(msg.session_id)).await;
                if let SessionStore::Redis(_) = store {
                    metrics.invalidations_published.inc();
                }
                metrics.sessions_revoked.inc();
            }
            Ok(existed)
        })
    }
}

/// Ends every session of a user (but `except`), on every pod. Returns how many ended.
#[derive(Message)]
#[rtype(result = "Reply<Result<usize, SessionError>>")]
pub struct RevokeAll {
    pub user_id: Uuid,
    pub except: Option<Uuid>,
}

impl Handler<RevokeAll> for SessionRegistry {
    type Result = Reply<Result<usize, SessionError>>;

    fn handle(&mut self, msg: RevokeAll, _: &mut Self::Context) -> Self::Result {
        let (store, cache, metrics) =
            (self.store.clone(), self.cache.clone(), self.metrics.clone());
        Reply::new(async move {
            let revoked = store.revoke_all(msg.user_id, msg.except).await?;
            revoked_here(&store, &cache, &metrics, &revoked).await;
            Ok(revoked.len())
        })
    }
}

/// Cuts an account off before it is disabled or deleted: from the moment Redis (or this process)
/// has it, no session of the user is created or refreshed, and every existing one is revoked on
/// every pod. Returns how many sessions ended.
#[derive(Message)]
#[rtype(result = "Reply<Result<usize, SessionError>>")]
pub struct CutOff(pub Uuid);

impl Handler<CutOff> for SessionRegistry {
    type Result = Reply<Result<usize, SessionError>>;

    fn handle(&mut self, msg: CutOff, _: &mut Self::Context) -> Self::Result {
        let (store, cache, metrics) =
            (self.store.clone(), self.cache.clone(), self.metrics.clone());
        Reply::new(async move {
            let revoked = store.cut_off(msg.0).await?;
            revoked_here(&store, &cache, &metrics, &revoked).await;
            cache.apply(&Invalidation::User(msg.0)).await;
            if let SessionStore::Redis(_) = store {
                metrics.invalidations_published.inc();
            }
            Ok(revoked.len())
        })
    }
}

/// Lifts a cut-off: the account may have sessions again.
#[derive(Message)]
#[rtype(result = "Reply<Result<(), SessionError>>")]
pub struct Restore(pub Uuid);

impl Handler<Restore> for SessionRegistry {
    type Result = Reply<Result<(), SessionError>>;

    fn handle(&mut self, msg: Restore, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Reply::new(async move { store.restore(msg.0).await })
    }
}

/// Whether the account is cut off (disabled or deleted within the last session lifetime).
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, SessionError>>")]
pub struct IsCutOff(pub Uuid);

impl Handler<IsCutOff> for SessionRegistry {
    type Result = Reply<Result<bool, SessionError>>;

    fn handle(&mut self, msg: IsCutOff, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Reply::new(async move { store.is_cut_off(msg.0).await })
    }
}

/// Replaces the roles and permissions of every live session of the user, then has every pod
/// re-read them (this one at once). Returns how many sessions were updated.
#[derive(Message)]
#[rtype(result = "Reply<Result<usize, SessionError>>")]
pub struct SetAccess {
    pub user_id: Uuid,
    pub access: crate::domain::SharedAccess,
}

impl Handler<SetAccess> for SessionRegistry {
    type Result = Reply<Result<usize, SessionError>>;

    fn handle(&mut self, msg: SetAccess, _: &mut Self::Context) -> Self::Result {
        let (store, cache, metrics) =
            (self.store.clone(), self.cache.clone(), self.metrics.clone());
        Reply::new(async move {
            let updated = store.set_access(msg.user_id, &msg.access).await?;
            cache.apply(&Invalidation::Access(msg.user_id)).await;
            if updated > 0 {
                if let SessionStore::Redis(_) = store {
                    metrics.invalidations_published.inc();
                }
            }
            Ok(updated)
        })
    }
}

/// The user's live sessions.
#[derive(Message)]
#[rtype(result = "Reply<Result<Vec<SessionRecord>, SessionError>>")]
pub struct ListSessions(pub Uuid);

impl Handler<ListSessions> for SessionRegistry {
    type Result = Reply<Result<Vec<SessionRecord>, SessionError>>;

    fn handle(&mut self, msg: ListSessions, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Reply::new(async move { store.list(msg.0).await })
    }
}

/// One refresh-token rotation; a detected reuse is revoked on every pod before this returns.
#[derive(Message)]
#[rtype(result = "Reply<Result<Rotation, SessionError>>")]
pub struct Refresh {
    pub presented: RefreshToken,
    pub successor: RefreshToken,
    pub jti: Uuid,
    pub now: i64,
}

impl Handler<Refresh> for SessionRegistry {
    type Result = Reply<Result<Rotation, SessionError>>;

    fn handle(&mut self, msg: Refresh, _: &mut Self::Context) -> Self::Result {
        let (store, cache, metrics) =
            (self.store.clone(), self.cache.clone(), self.metrics.clone());
        Reply::new(async move {
            let sid = msg.presented.session_id;
            let outcome = store
                .rotate(&msg.presented, &msg.successor, msg.jti, msg.now)
                .await?;
            if outcome == Rotation::Unsealed {
                // Already revoked (and announced) by the store; stop serving it here at once.
                cache.apply(&Invalidation::session(sid)).await;
            }
            if outcome == Rotation::Reused {
                cache.apply(&Invalidation::session(sid)).await;
                if let SessionStore::Redis(_) = store {
                    metrics.invalidations_published.inc();
                }
                metrics.sessions_revoked.inc();
                tracing::warn!(session_id = %sid, "refresh token reuse detected; session revoked");
            }
            Ok(outcome)
        })
    }
}

/// Readiness: can the store answer?
#[derive(Message)]
#[rtype(result = "Reply<Result<(), SessionError>>")]
pub struct Ping;

impl Handler<Ping> for SessionRegistry {
    type Result = Reply<Result<(), SessionError>>;

    fn handle(&mut self, _: Ping, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Reply::new(async move { store.ping().await })
    }
}

/// Graceful shutdown: drop the subscription and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        if let Some(sub) = self.sub.as_mut() {
            for link in sub.links.drain(..) {
                ctx.cancel_future(link.stream);
            }
        }
        ctx.stop();
    }
}
