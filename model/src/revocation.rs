//! Revocation and role changes across pods: one session, its record in Redis, and `pods` pods
//! each with a verified-token cache, a session cache, tombstones and an invalidation
//! subscription.
//!
//! Properties:
//! - `revoked session refused within the bound`: no pod accepts the session from its cache, or
//!   answers a read with it, `SESSION_CACHE_TTL` or more after the revocation was acknowledged,
//!   whatever pub/sub loses or delays (docs/sessions.md, "Revocation guarantee");
//! - `old roles gone within the bound`: likewise for the roles a role change replaced;
//! - `revocation prompt while subscribed` and `role change prompt while subscribed` (when
//!   pub/sub loses messages only together with a connection drop the pod notices, as Redis
//!   does): a pod accepts a revoked session, or old roles, only while the message that announces
//!   it is still on its way to that pod;
//! - `live session never refused`: no pod refuses a live session from its cache.
use stateright::{Model, Property};

/// The mechanisms that make the properties hold; `AS_BUILT` is what `src/` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Safeguards {
    /// `SessionRegistry::connect`: empty the cache when the subscription is back.
    pub flush_on_reconnect: bool,
    /// `SessionCache::flush` also voids answers of reads that were in flight across it (they
    /// began before the flush; found by this model). Off: a read that began before a drop and
    /// ends after the reconnect caches what it read, although the revocation that happened in
    /// between was never announced to this pod.
    pub flush_covers_reads_in_flight: bool,
    /// `SessionCache::new`: tombstones live `SESSION_CACHE_TTL` + the Redis timeout (off: they
    /// live only as long as a read may take, the Redis timeout).
    pub tombstone_covers_cache_ttl: bool,
    /// `SessionCache::lookup`: a cached answer counts as expired `SESSION_CACHE_TTL` after its read
    /// *started* (off: after it was inserted, moka's `time_to_live` alone).
    pub entry_age_from_read_start: bool,
    /// `JwtKeys::verify`: the verified-token cache remembers only that the token's signature and
    /// claims checked out, which never changes for a given token, so the model stores nothing for
    /// it and every check goes on to the session cache. Off: it also remembers that the check
    /// accepted the session (for its own lifetime, longer than `SESSION_CACHE_TTL`), and a token
    /// seen before is accepted without the session cache: the shortcut the design rules out.
    pub token_cache_holds_no_session_state: bool,
}

impl Safeguards {
    pub const AS_BUILT: Safeguards = Safeguards {
        flush_on_reconnect: true,
        flush_covers_reads_in_flight: true,
        tombstone_covers_cache_ttl: true,
        entry_age_from_read_start: true,
        token_cache_holds_no_session_state: true,
    };
}

#[derive(Clone, Debug)]
pub struct Revocation {
    pub pods: usize,
    /// SESSION_CACHE_TTL, in ticks.
    pub ttl: u8,
    /// The Redis timeout: a read not answered within it gives 503 and caches nothing.
    pub timeout: u8,
    pub max_time: u8,
    /// Pub/sub may lose a message while the pod still believes it is subscribed (a connection
    /// that died silently, noticed only by the next ping). Off: messages are lost only with a
    /// drop the pod notices.
    pub silent_loss: bool,
    /// How many subscription drops (with their reconnects) may happen in one run.
    pub drops: u8,
    pub safeguards: Safeguards,
}

impl Revocation {
    /// The bound checked in CI: 2 pods, TTL 2, timeout 1, 4 ticks, one subscription drop.
    pub fn ci(silent_loss: bool, safeguards: Safeguards) -> Self {
        Self {
            pods: 2,
            ttl: 2,
            timeout: 1,
            max_time: 4,
            silent_loss,
            drops: 1,
            safeguards,
        }
    }

    /// The verified-token cache's lifetime (a minute against a 5-second `SESSION_CACHE_TTL` by
    /// default): longer than the session cache's.
    fn token_ttl(&self) -> u8 {
        self.ttl + 2
    }

    fn tombstone_ttl(&self) -> u8 {
        if self.safeguards.tombstone_covers_cache_ttl {
            self.ttl + self.timeout
        } else {
            self.timeout
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Msg {
    /// `s:<sid>` on `{prefix}invalidate` (`Invalidation::Sessions`).
    Revoked,
    /// `a:<uid>` (`Invalidation::Access`).
    RolesChanged,
}

/// A cached store answer (`CacheEntry`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Entry {
    pub live: bool,
    pub roles: u8,
    pub read_at: u8,
    pub inserted_at: u8,
}

/// A store read in flight (`Validate`'s `load`): `snapshot` is what Redis answered, once it has.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Read {
    pub started: u8,
    /// Whether the cache was trusted when the read began (`Validate`'s `cacheable`).
    pub cacheable: bool,
    pub snapshot: Option<(bool, u8)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Pod {
    /// Subscribed, so the cache is trusted (`SessionCache::is_trusted`).
    pub subscribed: bool,
    /// Published to this pod, not yet applied, in order.
    pub inbox: Vec<Msg>,
    pub entry: Option<Entry>,
    /// `revoked_sessions`: until which tick.
    pub tombstone: Option<u8>,
    /// `changed_users`: when the role change was applied here, and until which tick it is kept.
    pub roles_changed: Option<(u8, u8)>,
    pub read: Option<Read>,
    /// When the cache was last flushed (`SessionCache::flush`): answers read before it are void.
    pub flushed_at: Option<u8>,
    /// The verified-token cache's memory of an accepted session, `(roles, until)`: only ever set
    /// without `token_cache_holds_no_session_state`.
    pub token_memo: Option<(u8, u8)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub now: u8,
    /// The session hash exists in Redis.
    pub live: bool,
    /// Its roles: 0, then 1 after the role change.
    pub roles: u8,
    /// Ghost: when the revocation and the role change were acknowledged.
    pub revoked_at: Option<u8>,
    pub roles_changed_at: Option<u8>,
    /// Ghost: a read answered a request against the bound.
    pub late_answer: bool,
    /// Subscription drops still allowed.
    pub drops_left: u8,
    pub pods: Vec<Pod>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Time passes: cached answers, tombstones and markers expire, reads time out.
    Tick,
    /// `SessionRegistry` `Revoke` handler: the REVOKE script (delete + PUBLISH, one step), then
    /// the serving pod's own `SessionCache::apply`.
    Revoke { via: usize },
    /// `SessionRegistry` `SetAccess`: the SET_ACCESS script (rewrite + PUBLISH), then the serving
    /// pod's own `apply`.
    ChangeRoles { via: usize },
    /// `SessionRegistry`'s `StreamHandler` applies the next message (`SessionCache::apply`).
    Deliver { pod: usize },
    /// Pub/sub loses the next message for this pod.
    Lose { pod: usize },
    /// `SessionRegistry::lost`: the subscription is noticed dead; the cache is no longer trusted.
    Drop { pod: usize },
    /// `SessionRegistry::connect` succeeded again.
    Reconnect { pod: usize },
    /// A token check missed the cache: `Validate` starts `store.load`.
    ReadStart { pod: usize },
    /// Redis executes the read (`RedisStore::load`, one HMGET).
    ReadExecuted { pod: usize },
    /// The answer arrives: cached if trusted (`try_get_with`), screened, answered.
    ReadFinish { pod: usize },
}

/// What a token check on this pod answers from its cache alone (`SessionCache::lookup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Accept {
        roles: u8,
    },
    Refuse,
    /// Ask the registry (a read).
    Miss,
}

impl Revocation {
    fn entry_expired(&self, e: &Entry, now: u8) -> bool {
        now >= e.inserted_at + self.ttl
            || (self.safeguards.entry_age_from_read_start && now >= e.read_at + self.ttl)
    }

    /// Read before the last flush: nothing announced since then reached it.
    fn entry_void(&self, pod: &Pod, e: &Entry) -> bool {
        self.safeguards.flush_covers_reads_in_flight
            && pod.flushed_at.is_some_and(|at| e.read_at <= at)
    }

    /// The hot path's answer without a store read: `JwtKeys::verify` (the verified-token cache),
    /// then `SessionCache::lookup` + `screen`.
    pub fn lookup(&self, pod: &Pod, now: u8) -> Answer {
        if let Some((roles, _)) = pod.token_memo {
            return Answer::Accept { roles };
        }
        if !pod.subscribed {
            return Answer::Miss;
        }
        let tombstone = pod.tombstone.is_some();
        let Some(e) = pod
            .entry
            .filter(|e| !self.entry_expired(e, now) && !self.entry_void(pod, e))
        else {
            return if tombstone {
                Answer::Refuse
            } else {
                Answer::Miss
            };
        };
        if !e.live || tombstone {
            return Answer::Refuse;
        }
        if pod.roles_changed.is_some_and(|(at, _)| e.read_at <= at) {
            return Answer::Miss;
        }
        Answer::Accept { roles: e.roles }
    }

    fn too_late(&self, state: &State, roles: u8) -> bool {
        let past = |at: Option<u8>| at.is_some_and(|t| state.now >= t + self.ttl);
        past(state.revoked_at) || (roles < state.roles && past(state.roles_changed_at))
    }

    fn apply(&self, pod: &mut Pod, msg: Msg, now: u8) {
        match msg {
            Msg::Revoked => {
                pod.tombstone = Some(now + self.tombstone_ttl());
                pod.entry = None;
            }
            Msg::RolesChanged => pod.roles_changed = Some((now, now + self.tombstone_ttl())),
        }
    }

    fn publish(&self, state: &mut State, msg: Msg, via: usize) {
        for pod in state.pods.iter_mut().filter(|p| p.subscribed) {
            pod.inbox.push(msg);
        }
        let now = state.now;
        self.apply(&mut state.pods[via], msg, now);
    }
}

impl Model for Revocation {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let pod = Pod {
            subscribed: true,
            inbox: Vec::new(),
            entry: None,
            tombstone: None,
            roles_changed: None,
            read: None,
            flushed_at: None,
            token_memo: None,
        };
        vec![State {
            now: 0,
            live: true,
            roles: 0,
            revoked_at: None,
            roles_changed_at: None,
            late_answer: false,
            drops_left: self.drops,
            pods: vec![pod; self.pods],
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.now < self.max_time {
            actions.push(Action::Tick);
        }
        for (i, p) in s.pods.iter().enumerate() {
            if s.live {
                actions.push(Action::Revoke { via: i });
                if s.roles == 0 {
                    actions.push(Action::ChangeRoles { via: i });
                }
            }
            if !p.inbox.is_empty() {
                actions.push(Action::Deliver { pod: i });
                if self.silent_loss {
                    actions.push(Action::Lose { pod: i });
                }
            }
            if p.subscribed {
                if s.drops_left > 0 {
                    actions.push(Action::Drop { pod: i });
                }
            } else {
                actions.push(Action::Reconnect { pod: i });
            }
            match p.read {
                None if self.lookup(p, s.now) == Answer::Miss => {
                    actions.push(Action::ReadStart { pod: i })
                }
                Some(Read { snapshot: None, .. }) => actions.push(Action::ReadExecuted { pod: i }),
                Some(Read {
                    snapshot: Some(_), ..
                }) => actions.push(Action::ReadFinish { pod: i }),
                None => {}
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => {
                s.now += 1;
                let now = s.now;
                for p in &mut s.pods {
                    if p.entry.is_some_and(|e| self.entry_expired(&e, now)) {
                        p.entry = None;
                    }
                    if p.tombstone.is_some_and(|until| now >= until) {
                        p.tombstone = None;
                    }
                    if p.roles_changed.is_some_and(|(_, until)| now >= until) {
                        p.roles_changed = None;
                    }
                    if p.token_memo.is_some_and(|(_, until)| now >= until) {
                        p.token_memo = None;
                    }
                    // Not answered within the timeout: 503, nothing cached.
                    if p.read.is_some_and(|r| now > r.started + self.timeout) {
                        p.read = None;
                    }
                }
            }
            Action::Revoke { via } => {
                s.live = false;
                s.revoked_at = Some(s.now);
                self.publish(&mut s, Msg::Revoked, via);
            }
            Action::ChangeRoles { via } => {
                s.roles = 1;
                s.roles_changed_at = Some(s.now);
                self.publish(&mut s, Msg::RolesChanged, via);
            }
            Action::Deliver { pod } => {
                let now = s.now;
                let p = &mut s.pods[pod];
                let msg = p.inbox.remove(0);
                self.apply(p, msg, now);
            }
            Action::Lose { pod } => {
                s.pods[pod].inbox.remove(0);
            }
            Action::Drop { pod } => {
                s.drops_left -= 1;
                let p = &mut s.pods[pod];
                p.subscribed = false;
                p.inbox.clear();
            }
            Action::Reconnect { pod } => {
                let p = &mut s.pods[pod];
                p.subscribed = true;
                if self.safeguards.flush_on_reconnect {
                    p.entry = None;
                    p.flushed_at = Some(s.now);
                }
            }
            Action::ReadStart { pod } => {
                let cacheable = s.pods[pod].subscribed;
                s.pods[pod].read = Some(Read {
                    started: s.now,
                    cacheable,
                    snapshot: None,
                });
            }
            Action::ReadExecuted { pod } => {
                let snapshot = (s.live, s.roles);
                if let Some(r) = s.pods[pod].read.as_mut() {
                    r.snapshot = Some(snapshot);
                }
            }
            Action::ReadFinish { pod } => {
                let now = s.now;
                let p = &mut s.pods[pod];
                let read = p.read.take()?;
                let (live, roles) = read.snapshot?;
                let entry = Entry {
                    live,
                    roles,
                    read_at: read.started,
                    inserted_at: now,
                };
                // Cached only if trusted when the read began: a store answer read while
                // invalidations could be missed is good for this one request only.
                if read.cacheable {
                    p.entry = Some(entry);
                }
                let stale = p.roles_changed.is_some_and(|(at, _)| read.started <= at);
                let accepted = live && p.tombstone.is_none() && !stale;
                if p.entry.is_some_and(|e| self.entry_void(p, &e)) {
                    p.entry = None;
                }
                if accepted && !self.safeguards.token_cache_holds_no_session_state {
                    p.token_memo = Some((roles, now + self.token_ttl()));
                }
                if accepted && self.too_late(&s, roles) {
                    s.late_answer = true;
                }
            }
        }
        Some(s)
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.now <= self.max_time
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "revoked session refused within the bound",
                |m: &Self, s: &State| {
                    !s.late_answer
                        && s.pods.iter().all(|p| match m.lookup(p, s.now) {
                            Answer::Accept { roles } => !m.too_late(s, roles),
                            _ => true,
                        })
                },
            ),
            Property::always(
                "revocation prompt while subscribed",
                |m: &Self, s: &State| {
                    m.silent_loss
                        || s.live
                        || s.pods.iter().all(|p| {
                            !matches!(m.lookup(p, s.now), Answer::Accept { .. })
                                || p.inbox.contains(&Msg::Revoked)
                        })
                },
            ),
            Property::always(
                "role change prompt while subscribed",
                |m: &Self, s: &State| {
                    m.silent_loss
                        || s.pods.iter().all(|p| match m.lookup(p, s.now) {
                            Answer::Accept { roles } => {
                                roles == s.roles || p.inbox.contains(&Msg::RolesChanged)
                            }
                            _ => true,
                        })
                },
            ),
            Property::always("live session never refused", |m: &Self, s: &State| {
                !s.live || s.pods.iter().all(|p| m.lookup(p, s.now) != Answer::Refuse)
            }),
            // Not vacuous: pods do serve from their caches, and revocations do meet reads in
            // flight.
            Property::sometimes("a pod serves from its cache", |m: &Self, s: &State| {
                s.pods
                    .iter()
                    .any(|p| matches!(m.lookup(p, s.now), Answer::Accept { .. }))
            }),
            Property::sometimes(
                "a revocation meets a read in flight",
                |_: &Self, s: &State| {
                    !s.live
                        && s.pods.iter().any(|p| {
                            p.read
                                .is_some_and(|r| r.snapshot.is_some_and(|(live, _)| live))
                        })
                },
            ),
        ]
    }
}
