//! The pod-local view of sessions: a moka cache in front of the store, plus tombstones for what
//! this pod has been told is revoked. Readers (the hot path) only read; the registry actor writes.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use moka::future::Cache;
use uuid::Uuid;

use super::{Invalidation, SessionState};

/// One cached answer of the store. `state: None` caches "no such session", so replaying a revoked
/// token does not cost a Redis read per request.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub state: Option<SessionState>,
    /// When the store read that produced this entry *started*: a revoke-all seen after that
    /// instant makes the entry untrustworthy even if the read finished later.
    pub read_at: Instant,
}

pub enum CacheLookup {
    /// A trusted cached answer (which may be "revoked").
    Hit(Option<SessionState>),
    /// Ask the registry (cache miss, or the cache is not trusted right now).
    Miss,
}

#[derive(Clone)]
pub struct SessionCache {
    entries: Cache<Uuid, Arc<CacheEntry>>,
    /// Sessions revoked while their entry might still be loading; outlive any such entry.
    revoked_sessions: Cache<Uuid, ()>,
    /// Users whose sessions were all revoked, with the instant that happened.
    revoked_users: Cache<Uuid, Instant>,
    /// False while the pub/sub subscription is down: invalidations could be lost, so only the
    /// store is believed (cached entries serve only as a fallback when the store is unreachable).
    trusted: Arc<AtomicBool>,
    ttl: Duration,
}

impl SessionCache {
    /// `ttl` bounds how long a pod trusts a cached answer (SESSION_CACHE_TTL); zero disables caching.
    pub fn new(ttl: Duration, trusted: bool) -> Self {
        // A tombstone must outlive any entry whose load started before the revoke:
        // load time (bounded by the Redis timeout) + ttl. A second of margin covers it.
        let tombstone_ttl = ttl + Duration::from_secs(1);
        Self {
            entries: Cache::builder()
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .max_capacity(if ttl.is_zero() { 0 } else { 1_000_000 })
                .build(),
            revoked_sessions: Cache::builder().time_to_live(tombstone_ttl).build(),
            revoked_users: Cache::builder().time_to_live(tombstone_ttl).build(),
            trusted: Arc::new(AtomicBool::new(trusted)),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    pub(super) fn set_trusted(&self, trusted: bool) {
        self.trusted.store(trusted, Ordering::Release);
    }

    /// The hot path: no message, no I/O.
    pub async fn lookup(&self, sid: Uuid) -> CacheLookup {
        if !self.is_trusted() {
            return CacheLookup::Miss;
        }
        match self.entries.get(&sid).await {
            Some(entry) => CacheLookup::Hit(self.screen(sid, &entry).await),
            None => CacheLookup::Miss,
        }
    }

    /// Applies the tombstones to a cached or freshly loaded entry.
    pub(super) async fn screen(&self, sid: Uuid, entry: &CacheEntry) -> Option<SessionState> {
        let state = entry.state?;
        if self.revoked_sessions.contains_key(&sid) {
            return None;
        }
        if let Some(at) = self.revoked_users.get(&state.user_id).await {
            if entry.read_at <= at {
                return None;
            }
        }
        Some(state)
    }

    /// A cached entry regardless of trust, for when the store cannot be reached.
    pub(super) async fn fallback(&self, sid: Uuid) -> Option<Arc<CacheEntry>> {
        self.entries.get(&sid).await
    }

    pub(super) fn entries(&self) -> &Cache<Uuid, Arc<CacheEntry>> {
        &self.entries
    }

    pub(super) async fn insert(&self, sid: Uuid, entry: Arc<CacheEntry>) {
        self.entries.insert(sid, entry).await;
    }

    /// Applies a revocation seen locally or received from another pod.
    pub(super) async fn apply(&self, inv: Invalidation) {
        match inv {
            Invalidation::Session(sid) => {
                self.revoked_sessions.insert(sid, ()).await;
                self.entries.invalidate(&sid).await;
            }
            Invalidation::User(uid) => {
                self.revoked_users.insert(uid, Instant::now()).await;
            }
        }
    }

    /// Forget every cached answer (after a gap in the invalidation stream). Tombstones stay.
    pub(super) fn flush(&self) {
        self.entries.invalidate_all();
    }
}
