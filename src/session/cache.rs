//! The pod-local view of sessions: a moka cache in front of the store, plus tombstones for what
//! this pod has been told is revoked. Readers (the hot path) only read; the registry's code writes.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use moka::future::Cache;
use uuid::Uuid;

use super::{now_unix, Invalidation, Lifetimes, SessionState};

/// One cached answer of the store. `state: None` caches "no such session", so replaying a revoked
/// token does not cost a Redis read per request.
#[derive(Debug)]
pub struct CacheEntry {
    pub state: Option<SessionState>,
    /// When the store read that produced this entry *started*: a revoke-all seen after that
    /// instant makes the entry untrustworthy even if the read finished later.
    pub read_at: Instant,
    /// Last use this pod knows of (unix seconds); drives throttled last_seen_at writes.
    touched_at: AtomicI64,
}

impl CacheEntry {
    pub fn new(state: Option<SessionState>, read_at: Instant) -> Self {
        let touched = state.as_ref().map_or(0, |s| s.last_seen_at);
        Self {
            state,
            read_at,
            touched_at: AtomicI64::new(touched),
        }
    }

    pub fn touched_at(&self) -> i64 {
        self.touched_at.load(Ordering::Relaxed)
    }

    /// True for one caller per `interval`: that caller records the session's use.
    pub fn claim_touch(&self, now: i64, interval: Duration) -> bool {
        let touched = self.touched_at();
        now - touched >= interval.as_secs() as i64
            && self
                .touched_at
                .compare_exchange(touched, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// A cached or loaded entry, judged against what this pod has heard since it was read.
pub(super) enum Screened {
    Live(SessionState),
    /// Revoked, unknown or expired.
    Gone,
    /// Live, but read before the user's roles changed: read it again.
    Stale,
}

pub enum CacheLookup {
    /// A trusted cached answer (`None`: revoked or unknown). `touch`: this request should record
    /// the session's use (at most once per touch interval per pod).
    Hit {
        state: Option<SessionState>,
        touch: bool,
    },
    /// Ask the registry. `fresh`: bypass the cache (the session may have gone idle).
    Miss { fresh: bool },
}

/// How long a tombstone must last: beyond the end of any cache entry whose read began before the
/// revocation. Such an entry is inserted when its read ends and lives `ttl` from then; a cache
/// miss reads the store at most twice (a second read when a role change arrived meanwhile), each
/// bounded by `store_timeout`. A second of margin covers scheduling.
pub(super) fn tombstone_ttl(ttl: Duration, store_timeout: Duration) -> Duration {
    ttl + store_timeout * 2 + Duration::from_secs(1)
}

#[derive(Clone)]
pub struct SessionCache {
    entries: Cache<Uuid, Arc<CacheEntry>>,
    /// Sessions revoked while their entry might still be loading; outlive any such entry.
    revoked_sessions: Cache<Uuid, ()>,
    /// Users whose sessions were all revoked, with the instant that happened.
    revoked_users: Cache<Uuid, Instant>,
    /// Users whose roles changed, with the instant: their entries read before it are stale.
    changed_users: Cache<Uuid, Instant>,
    /// When the last tombstone was written: until one could still be alive, the hot path skips
    /// the two tombstone lookups (most requests, since revocations are rare).
    /// Milliseconds after `epoch` (+1, so 0 means never).
    last_tombstone: Arc<AtomicU64>,
    epoch: Instant,
    tombstone_ttl: Duration,
    /// When the cache was last flushed (milliseconds after `epoch`, +1; 0: never): answers of
    /// reads that began before it may miss what was announced while the subscription was down,
    /// even if they were inserted after the flush.
    flushed_at: Arc<AtomicU64>,
    /// False while the pub/sub subscription is down: invalidations could be lost, so only the
    /// store is believed (cached entries serve only as a fallback when the store is unreachable).
    trusted: Arc<AtomicBool>,
    ttl: Duration,
    lifetimes: Lifetimes,
}

impl SessionCache {
    /// `ttl` bounds how long a pod trusts a cached answer (SESSION_CACHE_TTL); zero disables caching.
    /// `store_timeout` bounds one store read (REDIS_TIMEOUT_MS).
    pub fn new(
        ttl: Duration,
        store_timeout: Duration,
        trusted: bool,
        lifetimes: Lifetimes,
    ) -> Self {
        let tombstone_ttl = tombstone_ttl(ttl, store_timeout);
        Self {
            entries: Cache::builder()
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .max_capacity(if ttl.is_zero() { 0 } else { 1_000_000 })
                .build(),
            revoked_sessions: Cache::builder().time_to_live(tombstone_ttl).build(),
            revoked_users: Cache::builder().time_to_live(tombstone_ttl).build(),
            changed_users: Cache::builder().time_to_live(tombstone_ttl).build(),
            last_tombstone: Arc::default(),
            epoch: Instant::now(),
            tombstone_ttl,
            flushed_at: Arc::default(),
            trusted: Arc::new(AtomicBool::new(trusted)),
            ttl,
            lifetimes,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
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
            return CacheLookup::Miss { fresh: false };
        }
        let Some(entry) = self.entries.get(&sid).await else {
            // Just revoked here or announced by another pod: answer without asking Redis.
            if self.tombstones_may_exist() && self.revoked_sessions.contains_key(&sid) {
                return CacheLookup::Hit {
                    state: None,
                    touch: false,
                };
            }
            return CacheLookup::Miss { fresh: false };
        };
        if !self.current(&entry) {
            return CacheLookup::Miss { fresh: true };
        }
        let state = match self.screen(sid, &entry).await {
            Screened::Live(state) => state,
            Screened::Gone => {
                return CacheLookup::Hit {
                    state: None,
                    touch: false,
                }
            }
            // Read before a role change: the store has the new roles.
            Screened::Stale => return CacheLookup::Miss { fresh: true },
        };
        let now = now_unix();
        if let Some(idle) = self.lifetimes.idle_timeout {
            // Unused here for longer than the idle timeout: another pod may have seen use, so
            // only the store can say whether the session is still alive.
            if now - entry.touched_at() >= idle.as_secs() as i64 {
                return CacheLookup::Miss { fresh: true };
            }
        }
        CacheLookup::Hit {
            state: Some(state),
            touch: entry.claim_touch(now, self.lifetimes.touch_interval),
        }
    }

    /// Applies the tombstones to a cached or freshly loaded entry.
    pub(super) async fn screen(&self, sid: Uuid, entry: &CacheEntry) -> Screened {
        let Some(state) = &entry.state else {
            return Screened::Gone;
        };
        if !self.tombstones_may_exist() {
            return Screened::Live(state.clone());
        }
        if self.revoked_sessions.contains_key(&sid) {
            return Screened::Gone;
        }
        if let Some(at) = self.revoked_users.get(&state.user_id).await {
            if entry.read_at <= at {
                return Screened::Gone;
            }
        }
        if let Some(at) = self.changed_users.get(&state.user_id).await {
            if entry.read_at <= at {
                return Screened::Stale;
            }
        }
        Screened::Live(state.clone())
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

    fn tombstones_may_exist(&self) -> bool {
        match self.last_tombstone.load(Ordering::Acquire) {
            0 => false,
            at => {
                let age = (self.epoch.elapsed().as_millis() as u64 + 1).saturating_sub(at);
                age <= self.tombstone_ttl.as_millis() as u64
            }
        }
    }

    /// Applies a revocation seen locally or received from another pod.
    pub(super) async fn apply(&self, inv: &Invalidation) {
        // Marked before the tombstones are written, so a concurrent reader never skips a
        // lookup it needs.
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last_tombstone.store(now, Ordering::Release);
        match inv {
            Invalidation::Sessions(sids) => {
                for sid in sids {
                    self.revoked_sessions.insert(*sid, ()).await;
                    self.entries.invalidate(sid).await;
                }
            }
            Invalidation::User(uid) => {
                self.revoked_users.insert(*uid, Instant::now()).await;
            }
            Invalidation::Access(uid) => {
                self.changed_users.insert(*uid, Instant::now()).await;
            }
        }
    }

    /// Whether a cached answer may still be trusted. Its age counts from when its read *began*
    /// (moka's time-to-live counts from the insertion, up to a Redis timeout later), so a read in
    /// flight during a revocation whose message is lost cannot stretch the SESSION_CACHE_TTL
    /// bound; and a read that began before the last flush knows nothing of what was announced
    /// while the subscription was down. Both gaps were found by the protocol model
    /// (`model/src/revocation.rs`: `entry_age_from_read_start`, `flush_covers_reads_in_flight`).
    fn current(&self, entry: &CacheEntry) -> bool {
        if entry.read_at.elapsed() >= self.ttl {
            return false;
        }
        match self.flushed_at.load(Ordering::Acquire) {
            0 => true,
            flushed => self.millis(entry.read_at) > flushed,
        }
    }

    /// `at` as milliseconds after `epoch`, +1 (0 stays "never").
    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// Forget every cached answer (after a gap in the invalidation stream), including those of
    /// reads still in flight. Tombstones stay.
    pub(super) fn flush(&self) {
        self.flushed_at
            .store(self.millis(Instant::now()), Ordering::Release);
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Access;

    fn state(uid: Uuid, roles: &[&str]) -> SessionState {
        let roles = roles.iter().map(|r| r.to_string()).collect();
        SessionState {
            user_id: uid,
            expires_at: now_unix() + 3600,
            last_seen_at: now_unix(),
            access: Arc::new(Access::new(roles, vec![])),
            auth: Arc::default(),
        }
    }

    /// A trusted cache with a 250 ms store timeout and no idle timeout.
    fn cache(ttl: Duration) -> SessionCache {
        let lifetimes = Lifetimes::new(None, Duration::from_secs(10));
        SessionCache::new(ttl, Duration::from_millis(250), true, lifetimes)
    }

    fn roles_of(lookup: CacheLookup) -> Option<Vec<String>> {
        match lookup {
            CacheLookup::Hit { state: Some(s), .. } => Some(s.access.roles.clone()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_role_change_makes_older_entries_stale_not_revoked() {
        let cache = cache(Duration::from_secs(5));
        let (uid, sid, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let read_at = Instant::now();
        cache
            .insert(
                sid,
                Arc::new(CacheEntry::new(Some(state(uid, &["user"])), read_at)),
            )
            .await;
        cache
            .insert(
                other,
                Arc::new(CacheEntry::new(
                    Some(state(Uuid::new_v4(), &["user"])),
                    read_at,
                )),
            )
            .await;
        assert_eq!(roles_of(cache.lookup(sid).await), Some(vec!["user".into()]));

        cache.apply(&Invalidation::Access(uid)).await;
        // Read before the change: ask the store again (bypassing the cached answer).
        assert!(matches!(
            cache.lookup(sid).await,
            CacheLookup::Miss { fresh: true }
        ));
        // Other users' sessions are untouched.
        assert!(roles_of(cache.lookup(other).await).is_some());

        tokio::time::sleep(Duration::from_millis(2)).await;
        let reread = CacheEntry::new(Some(state(uid, &["admin", "user"])), Instant::now());
        cache.insert(sid, Arc::new(reread)).await;
        assert_eq!(
            roles_of(cache.lookup(sid).await),
            Some(vec!["admin".into(), "user".into()])
        );

        // A revocation still wins over a re-read.
        cache.apply(&Invalidation::User(uid)).await;
        assert!(matches!(
            cache.lookup(sid).await,
            CacheLookup::Hit { state: None, .. }
        ));
    }

    #[test]
    fn a_tombstone_outlives_any_entry_whose_read_began_before_the_revocation() {
        let (ttl, timeout) = (Duration::from_secs(5), Duration::from_millis(250));
        let lifetime = tombstone_ttl(ttl, timeout);
        // Worst case: two reads of one cache miss, each up to the timeout, then the entry's ttl.
        assert!(lifetime > ttl + timeout * 2, "{lifetime:?}");
        assert_eq!(lifetime, Duration::from_millis(6_500));
        // A slow store lengthens it; caching off still leaves the reads in flight covered.
        assert!(tombstone_ttl(ttl, Duration::from_secs(60)) > ttl + Duration::from_secs(120));
        assert!(tombstone_ttl(Duration::ZERO, timeout) > timeout * 2);
    }

    /// A read that began before a revocation and ends (caching its answer) as late as the store
    /// timeout allows: the revoked session is never served from the cache afterwards, although
    /// the read took longer than SESSION_CACHE_TTL plus the old one-second margin.
    #[tokio::test]
    async fn a_read_in_flight_during_a_revocation_cannot_cache_the_revoked_session() {
        let lifetimes = Lifetimes::new(None, Duration::from_secs(10));
        let (ttl, timeout) = (Duration::from_millis(100), Duration::from_millis(1_500));
        let cache = SessionCache::new(ttl, timeout, true, lifetimes);
        let (uid, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let read_at = Instant::now();
        cache.apply(&Invalidation::session(sid)).await;
        tokio::time::sleep(timeout).await;
        let stale = CacheEntry::new(Some(state(uid, &["user"])), read_at);
        cache.insert(sid, Arc::new(stale)).await;
        let until = Instant::now() + ttl + Duration::from_millis(300);
        while Instant::now() < until {
            assert!(
                roles_of(cache.lookup(sid).await).is_none(),
                "a revoked session was served from the cache"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The model's trace for `entry_age_from_read_start`: a read begins, Redis answers, the
    /// session is revoked and the message to this pod is lost, then the answer is inserted. It
    /// must not be trusted SESSION_CACHE_TTL after the read began, however late it was inserted.
    #[tokio::test]
    async fn a_cached_answer_ages_from_the_start_of_its_read() {
        let ttl = Duration::from_secs(3);
        let cache = cache(ttl);
        let (uid, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let read_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await; // the read in flight
        cache
            .insert(
                sid,
                Arc::new(CacheEntry::new(Some(state(uid, &["user"])), read_at)),
            )
            .await;
        assert!(roles_of(cache.lookup(sid).await).is_some());
        // 3 s after the read began, 1.5 s after the insertion: no longer trusted.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(matches!(
            cache.lookup(sid).await,
            CacheLookup::Miss { fresh: true }
        ));
    }

    /// The model's trace for `flush_covers_reads_in_flight`: a read begins, the subscription
    /// drops, the session is revoked (unannounced here), the subscription comes back and the
    /// cache is flushed, then the read's answer is inserted. It must not be trusted.
    #[tokio::test]
    async fn a_flush_voids_answers_of_reads_that_began_before_it() {
        let cache = cache(Duration::from_secs(5));
        let (uid, before, after) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let read_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache.flush();
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache
            .insert(
                before,
                Arc::new(CacheEntry::new(Some(state(uid, &["user"])), read_at)),
            )
            .await;
        cache
            .insert(
                after,
                Arc::new(CacheEntry::new(Some(state(uid, &["user"])), Instant::now())),
            )
            .await;
        assert!(matches!(
            cache.lookup(before).await,
            CacheLookup::Miss { fresh: true }
        ));
        assert!(roles_of(cache.lookup(after).await).is_some());
    }
}
